"""A1111's prompt emphasis and long prompts: read as A1111 reads them (a table of its parser's own results), encoded
by compel for SD 1.5 and SDXL, and said to be ignored (read as plain words) by a family that weighs no words."""

import numpy as np
import pytest
import torch

import easel
from easel.prompts import prompt_weights, unweighted
from easel.providers.diffusers.prompt_weights import weigh_prompts

# A1111's parse_prompt_attention on these prompts (its docstring's examples, and BREAK)
A1111 = {
    "normal text": [[("normal text", 1.0)]],
    "an (important) word": [[("an ", 1.0), ("important", 1.1), (" word", 1.0)]],
    "(unbalanced": [[("unbalanced", 1.1)]],
    "\\(literal\\]": [[("(literal]", 1.0)]],
    "(unnecessary)(parens)": [[("unnecessaryparens", 1.1)]],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [[
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]],
    "[fog] (castle:1.3)": [[("fog", 1 / 1.1), (" ", 1.0), ("castle", 1.3)]],
    "a cat BREAK a dog": [[("a cat", 1.0)], [("a dog", 1.0)]],
    "ratio 3:2, (x:y)": [[("ratio 3:2, ", 1.0), ("x:y", 1.1)]],
}


@pytest.mark.parametrize("prompt", list(A1111))
def test_the_parser_reads_prompts_as_a1111_does(prompt):
    assert prompt_weights(prompt) == A1111[prompt]


def test_plain_words():
    assert unweighted("a (castle:1.3) on [a hill] BREAK (((sky)))") == "a castle on a hill sky"


@pytest.fixture(params=["sd15", "sdxl"])
def tiny(request, tiny_models, easel_home):
    import shutil

    shutil.copytree(tiny_models[request.param], easel_home / "models" / f"tiny-{request.param}")
    return request.param


def test_a_weight_changes_the_conditioning_against_the_word_alone(tiny, tiny_models):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_models[tiny])

    def embeds(prompt):
        out = weigh_prompts(pipe, {"prompt": [prompt], "negative_prompt": ["blurry"]})
        return out.get("prompt_embeds")

    assert embeds("a castle on a hill") is None  # no emphasis, under 77 tokens: the pipeline gets the text
    weighted, alone = embeds("a (castle:1.5) on a hill"), embeds("a (castle:1.0) on a hill")
    assert weighted is not None and not torch.equal(weighted, alone)
    # the words around the weighted one keep their conditioning; the weighted word's changes
    changed = (weighted - alone).abs().amax(dim=-1)[0]
    assert changed.max() > 0 and changed[0] == 0  # the start token is untouched
    words = " ".join(["castle"] * 100)
    tokens = len(pipe.tokenizer(words).input_ids) - 2
    length = embeds(words).shape[1]  # in chunks of at most 75 tokens (and start, end): none cut
    assert length % 77 == 0 and length >= -(-tokens // 75) * 77


def test_emphasis_long_prompts_and_break_change_the_image(tiny):
    kw = dict(model=f"tiny-{tiny}", size="64x64", steps=2, seed=3, save=False)

    def pixels(prompt, **more):
        return np.asarray(easel.generate(prompt, **kw, **more)[0].image, dtype=np.int16)

    plain = pixels("a castle on a hill")
    assert np.array_equal(pixels("a (castle:1.0) on a hill"), plain)  # weight 1 is no weight
    assert not np.array_equal(pixels("a (castle:1.5) on a hill"), plain)
    assert not np.array_equal(pixels("a castle BREAK on a hill"), plain)
    assert not np.array_equal(pixels("a castle on a hill", negative_prompt="(fog:1.4)"),
                              pixels("a castle on a hill", negative_prompt="fog"))
    # past 77 tokens the words still count (a pipeline alone would cut them off)
    words = " ".join(["castle"] * 90)
    assert not np.array_equal(pixels(f"{words} fog"), pixels(f"{words} sky"))
    made = easel.generate("a (castle:1.5) on a hill", **kw)
    assert made[0].parameters["prompt"] == "a (castle:1.5) on a hill" and not made.warnings


def test_a_family_without_weights_reads_plain_words_and_says_so():
    made = easel.generate("a large (red:1.4) circle on a [blue] background", size="64x64", save=False)
    assert made[0].parameters["revised_prompt"] == "a large red circle on a blue background"
    assert made[0].parameters["prompt"] == "a large (red:1.4) circle on a [blue] background"
    assert any("does not weight prompt words" in w for w in made.warnings)
