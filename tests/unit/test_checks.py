import pytest

from easel.catalog import default_catalog
from easel.checks import check_request
from easel.errors import InvalidRequestError, ModelNotFoundError, UnsupportedError
from easel.types import ImageRequest


def check(**fields):
    return check_request(ImageRequest(**{"prompt": "a red circle", **fields}))


@pytest.mark.parametrize("fields, param, fragment", [
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"prompt": "a " * 400}, "prompt", "800 characters"),
    ({"num_images": 0}, "n", "between 1 and 10 but is 0"),
    ({"num_images": 11}, "n", "but is 11"),
    ({"width": 100}, "width", "divisible by 8 for builtin but is 100"),
    ({"size": "250x256"}, "size", "but its width is 250"),
    ({"size": "huge"}, "size", "'huge'"),
    ({"num_inference_steps": -3}, "num_inference_steps", "but is -3"),
    ({"guidance_scale": -1.0}, "guidance_scale", "but is -1.0"),
    ({"seed": -5}, "seed", "but is -5"),
    ({"output_format": "gif"}, "output_format", "'gif'"),
    ({"scheduler": "warp-drive"}, "scheduler", "'warp-drive'"),
    ({"extra": {"true_cfg_scale": 4.0}}, "true_cfg_scale", "Unknown option 'true_cfg_scale' for builtin"),
    ({"aspect": "banana"}, "aspect", "'banana'"),
    ({"model": "qwen-image", "width": 1000}, "width", "divisible by 16 for qwen-image but is 1000"),
    ({"model": "qwen-image", "extra": {"true_cfg_scale": -2}}, "true_cfg_scale", "but is -2"),
])
def test_bad_input_names_the_parameter_and_the_value(fields, param, fragment):
    with pytest.raises(InvalidRequestError) as info:
        check(**fields)
    assert info.value.param == param
    assert fragment in info.value.message


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError) as info:
        check(model="no-such-model")
    assert info.value.param == "model" and "no-such-model" in info.value.message and "sdxl" in info.value.message


def test_defaults_come_from_the_family_and_model():
    spec, r = check()
    assert (spec.name, r.width, r.height, r.num_inference_steps, r.guidance_scale) == ("builtin", 256, 256, 12, 2.5)
    spec, r = check(model="flux-schnell")
    assert (spec.family.name, r.num_inference_steps, r.guidance_scale, r.width) == ("flux", 4, 0.0, 1024)
    spec, r = check(model="qwen")  # an alias
    assert spec.name == "qwen-image" and r.negative_prompt == " " and spec.family.cfg_param == "true_cfg_scale"


def test_size_and_aspect_presets():
    assert check(size="1024x1792", model="sdxl")[1].width == 1024
    _, r = check(aspect="16:9", model="sdxl")
    assert (r.width, r.height) == (1344, 768)
    _, r = check(aspect="16:9", model="qwen-image")
    assert (r.width, r.height) == (1664, 928)
    _, r = check(aspect="5:4", model="sdxl")  # not a preset: same pixel count, family's step
    assert r.width % 8 == 0 and r.height % 8 == 0 and abs(r.width / r.height - 1.25) < 0.05


def test_turbo_models_refuse_a_negative_prompt_and_builtin_refuses_nothing_it_supports():
    with pytest.raises(UnsupportedError) as info:
        check(model="sdxl-turbo", negative_prompt="blurry")
    assert info.value.param == "negative_prompt"
    assert check(negative_prompt="a green square")[1].negative_prompt == "a green square"


def test_memory_and_family_options_are_accepted():
    _, r = check(model="flux-dev", extra={"offload": "sequential", "vae_tiling": True, "max_sequence_length": 256})
    assert r.extra == {"offload": "sequential", "vae_tiling": True, "max_sequence_length": 256}


def test_catalog_lists_the_families_the_issue_names():
    names = set(default_catalog().models)
    assert {"builtin", "sd15", "sd-turbo", "sdxl", "sdxl-turbo", "sd35-medium", "sd35-large", "flux-schnell",
            "flux-dev", "qwen-image"} <= names
    assert default_catalog().models["flux-dev"].gated
    qwen = default_catalog().models["qwen-image"].family
    assert qwen.quality_words["en"] and qwen.quality_words["zh"]


def test_edit_needs_an_image_and_a_mask_of_the_same_size():
    from PIL import Image

    with pytest.raises(InvalidRequestError) as info:
        check(mode="edit")
    assert info.value.param == "image"
    with pytest.raises(InvalidRequestError) as info:
        check(mode="edit", image=Image.new("RGB", (64, 64)), mask=Image.new("L", (32, 32)))
    assert info.value.param == "mask" and "32x32" in info.value.message


@pytest.mark.parametrize("prompt, category", [
    ("a naked woman on a beach", "sexual content"),
    ("a gory decapitation scene", "graphic violence"),
    ("a person thinking about suicide", "self-harm"),
    ("Taylor Swift eating cake", "real public figures"),
    ("pikachu on a skateboard", "protected characters"),
])
def test_content_policy_names_the_category(prompt, category):
    from easel.errors import ContentPolicyError

    with pytest.raises(ContentPolicyError) as info:
        check(prompt=prompt, model="sdxl")
    assert info.value.code == "content_policy_violation" and f"category: {category}" in info.value.message


def test_moderation_low_allows_mild_categories_but_never_the_worst():
    from easel.errors import ContentPolicyError

    check(prompt="a gory zombie movie poster", model="sdxl", moderation="low")
    with pytest.raises(ContentPolicyError):
        check(prompt="a naked child", model="sdxl", moderation="low")
    check(prompt="a red circle on the left on a blue background")  # ordinary prompts pass


def test_an_error_is_renamed_into_a_fronts_own_terms():
    with pytest.raises(InvalidRequestError) as info:
        check(num_inference_steps=0)
    renamed = info.value.renamed({"num_inference_steps": "steps"})
    assert renamed.param == "steps" and "`steps`" in renamed.message and "num_inference_steps" not in str(renamed)
    assert renamed.renamed({"n": "-n"}).param == "steps"  # other names leave it as it is


def _picture(size=(64, 64)):
    from PIL import Image

    return Image.new("RGB", size, (200, 30, 30))


def test_an_edit_without_a_mask_is_decided_by_the_models_family():
    image, other = _picture(), _picture((96, 64))
    # a model that edits by instruction: the images go in as they are, strength does not apply
    kontext = check(model="flux-kontext", mode="edit", image=image, strength=0.5).request
    assert (kontext.mode, kontext.mask, kontext.strength) == ("edit", None, None)
    assert any("`strength` (0.5) does not apply" in w for w in kontext.warnings)
    plus = check(model="qwen-image-edit-plus", mode="edit", image=image, references=[other, other]).request
    assert len(plus.references) == 2
    # OpenAI's gpt-image models edit by instruction too, from up to 16 images
    assert check(model="openai:gpt-image-1", mode="edit", image=image, references=[other]).request.mode == "edit"
    # any other model: the whole picture, image-to-image at 0.8 unless a strength is given
    whole = check(mode="edit", image=image).request
    assert (whole.mode, whole.strength) == ("vary", 0.8)
    assert check(model="sd-turbo", mode="edit", image=image).request.mode == "vary"  # it has no inpainting
    assert check(mode="edit", image=image, strength=0.3).request.strength == 0.3
    # several images to a model that takes one: the first, said
    first = check(mode="edit", image=image, references=[other]).request
    assert first.references == [] and any("the first of the 2 given was used" in w for w in first.warnings)


@pytest.mark.parametrize("fields, param, fragment", [
    ({"model": "flux-kontext", "references": [_picture()]}, "image", "at most 1 image but got 2"),
    ({"model": "qwen-image-edit-plus", "references": [_picture()] * 3}, "image", "at most 3 images but got 4"),
    ({"model": "qwen-image-edit-plus", "mask": _picture().convert("L")}, "mask", "takes no mask"),
    ({"model": "openai:dall-e-2"}, "mask", "edits the area a mask names"),
    ({"model": "sd-turbo", "mask": _picture().convert("L")}, "model", "does not support edits"),
    ({"model": "sana"}, "model", "does not support edits"),
])
def test_what_an_edit_cannot_be_is_refused_naming_the_parameter(fields, param, fragment):
    with pytest.raises((InvalidRequestError, UnsupportedError)) as info:
        check(mode="edit", image=_picture(), **fields)
    assert info.value.param == param and fragment in info.value.message, info.value.message


def test_a_family_without_image_to_image_refuses_a_variation():
    for model in ("sana", "hidream-full", "lumina2", "flux2-klein", "qwen-image-edit"):
        with pytest.raises(UnsupportedError) as info:
            check(model=model, mode="vary", image=_picture())
        assert info.value.param == "model" and "does not support variations" in info.value.message
