"""The memory plan: a model's needs against the memory free choose where it goes, as the README's table says, and a
model that cannot fit even offloaded is refused before anything loads, with the numbers."""

import pytest

from easel.errors import InvalidRequestError
from easel.providers.diffusers import memory
from easel.providers.diffusers.memory import GB, Needs, choose

# FLUX.1-dev in bfloat16: its transformer, T5, CLIP and VAE; 2 GB of work at 1024x1024
FLUX = Needs({"transformer": int(23.8 * GB), "text_encoder_2": int(9.5 * GB), "text_encoder": int(0.25 * GB),
              "vae": int(0.17 * GB)}, int(2 * GB))


@pytest.mark.parametrize("gpu_free, ram_free, placement", [
    (80, 64, "none"),  # everything on the device
    (32, 64, "model"),  # the transformer and the work fit at once: one component on the device at a time
    (16, 64, "group"),  # not even the transformer: its layers move as they run
    (2.5, 64, "sequential"),  # only the work fits
])
def test_a_gpu_with_n_gb_free_chooses_the_placement_of_the_table(gpu_free, ram_free, placement):
    plan = choose(FLUX, "cuda", int(gpu_free * GB), int(ram_free * GB))
    assert plan.offload == placement
    assert f"{gpu_free:.1f} GB" in plan.why


@pytest.mark.parametrize("device, gpu_free, ram_free, says", [
    ("cuda", 1, 64, "needs about 2.0 GB, and 1.0 GB is free on cuda"),  # not even the work fits on the device
    ("cuda", 80 * 0 + 16, 16, "needs about 33.7 GB, and 16.0 GB is free of RAM to hold it offloaded"),
    ("cpu", None, 24, "needs about 35.7 GB, and 24.0 GB is free of RAM"),
])
def test_a_model_too_big_is_refused_with_the_numbers(device, gpu_free, ram_free, says):
    with pytest.raises(InvalidRequestError) as caught:
        choose(FLUX, device, None if gpu_free is None else int(gpu_free * GB), int(ram_free * GB))
    assert says in caught.value.message and "flux-dev:Q4_0" in caught.value.message
    assert caught.value.param == "model" and caught.value.code == "model_too_large"


def test_an_offload_asked_for_is_kept_and_a_cpu_with_room_runs_it_whole():
    assert choose(FLUX, "cuda", int(80 * GB), int(64 * GB), "sequential").offload == "sequential"
    assert choose(FLUX, "cpu", None, int(64 * GB)).offload == "none"


def test_needs_are_read_from_the_files_in_the_dtype_and_quantization_they_load_in(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    for name, count in (("unet", 1000), ("text_encoder", 300)):
        (folder / name).mkdir(parents=True)
        save_file({"w": torch.zeros(count, dtype=torch.float16)}, str(folder / name / "model.safetensors"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    plain = memory.needs(folder, "float32", "none", 512 * 512, 1)
    assert plain.components == {"text_encoder": 1200, "unet": 4000}  # float16 on disk, float32 loaded
    assert memory.needs(folder, "float32", "int8", 512 * 512, 1).components["unet"] == 1000
    assert memory.needs(folder, "bfloat16", "nf4", 512 * 512, 1).components["unet"] == 500
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"0" * 123)
    assert memory.needs(folder, "float32", "none", 512 * 512, 1, gguf).components["unet"] == 123
    assert memory.needs(folder, "float32", "none", 2048 * 2048, 4).work > plain.work


def test_a_quantized_model_is_quantized_before_it_moves_where_its_full_size_would_not_fit(tmp_path, monkeypatch):
    """int8 on a GPU: quantized there (fast) where the bfloat16 weights fit too, else quantized first."""
    import json

    import torch
    from safetensors.torch import save_file

    from easel.catalog import ModelSpec, default_catalog
    from easel.providers.diffusers.loading import Loader

    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    save_file({"w": torch.zeros(1000, dtype=torch.bfloat16)}, str(folder / "transformer" / "m.safetensors"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    spec = ModelSpec(name="m", family=default_catalog().families["flux"], source=str(folder))
    loader = Loader(device="cuda")
    options = loader.options(spec, {"quantize": "int8"})
    work = memory.work_bytes(1024 * 1024, 1, 2)
    for free, in_place in ((work + 10_000, True), (work + 1_500, False)):  # 2000 bytes in bf16, 1000 in int8
        monkeypatch.setattr(memory, "free_memory", lambda device, free=free: (int(free / memory.HEADROOM), 10**12))
        plan = loader.plan(spec, options)
        assert plan.offload == "none" and loader._quantize_in_place(spec, options, plan) is in_place
