"""ComfyUI's API-format workflows as Easel requests: the node classes Easel runs (what `/object_info` lists), and
the graphs that are one generation read into one `ImageRequest`: the stock text-to-image graph, image-to-image
(`LoadImage` + `VAEEncode` at the sampler's denoise), inpainting (`VAEEncodeForInpaint`, or `SetLatentNoiseMask`),
`LoraLoader` chains, `CLIPSetLastLayer` (clip skip), `ControlNetApply` / `ControlNetApplyAdvanced`, `FluxGuidance`,
and a latent upscale into a second sampler (the hires fix). Anything else is refused in ComfyUI's own error shape,
naming the node."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..control import ControlUnit
from ..types import ImageRequest

# ComfyUI's samplers and schedulers -> Easel's schedulers (a schedule that has no Easel variant: the sampler's own)
SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "lms": "lms", "dpmpp_2m": "dpm++",
            "ddim": "ddim", "uni_pc": "unipc", "uni_pc_bh2": "unipc", "lcm": "lcm"}
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
LATENT_METHODS = {"nearest-exact": "latent-nearest-exact", "bilinear": "latent", "area": "latent",
                  "bicubic": "latent-bicubic", "bislerp": "latent"}
OUTPUT_NODES = ("SaveImage", "PreviewImage")
MAX_SEED = 2**63 - 1  # Easel's seeds are 63-bit


class GraphError(Exception):
    """A workflow ComfyUI would refuse, or one Easel cannot run: `body()` is ComfyUI's answer to /prompt."""

    def __init__(self, message: str, node: str | None = None, class_type: str | None = None,
                 kind: str = "invalid_prompt", details: str = "", input_name: str | None = None):
        super().__init__(message)
        self.message, self.node, self.class_type, self.kind = message, node, class_type, kind
        self.details, self.input_name = details, input_name

    def body(self, outputs: list[str] = ()) -> dict[str, Any]:
        if self.node is None:
            return {"error": {"type": self.kind, "message": self.message, "details": self.details,
                              "extra_info": {}}, "node_errors": {}}
        error = {"type": self.kind, "message": self.message, "details": self.details,
                 "extra_info": {"input_name": self.input_name} if self.input_name else {}}
        return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "", "extra_info": {}},
                "node_errors": {self.node: {"errors": [error], "dependent_outputs": list(outputs),
                                            "class_type": self.class_type}}}


@dataclasses.dataclass
class Choices:
    """What the server offers a workflow's choice inputs: models, LoRA files, ControlNets, uploaded images."""

    models: list[str]
    loras: list[str]
    controlnets: list[str]
    images: list[str]


def _int(lo: int, hi: int, default: int, step: int = 1) -> list:
    return ["INT", {"default": default, "min": lo, "max": hi, "step": step}]


def _float(lo: float, hi: float, default: float, step: float = 0.01) -> list:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step}]


def node_inputs(choices: Choices) -> dict[str, tuple[dict[str, list], tuple[str, ...], str]]:
    """Each node class Easel runs: its required inputs (ComfyUI's input spec), its outputs and its category."""
    sampler = {"model": ["MODEL"], "seed": _int(0, MAX_SEED, 0), "steps": _int(1, 500, 20),
               "cfg": _float(0.0, 100.0, 8.0, 0.1), "sampler_name": [list(SAMPLERS)], "scheduler": [list(SCHEDULERS)],
               "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
               "denoise": _float(0.0, 1.0, 1.0)}
    size = {"width": _int(16, 8192, 512, 8), "height": _int(16, 8192, 512, 8), "batch_size": _int(1, 10, 1)}
    return {
        "CheckpointLoaderSimple": ({"ckpt_name": [choices.models]}, ("MODEL", "CLIP", "VAE"), "loaders"),
        "UNETLoader": ({"unet_name": [choices.models], "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e5m2"]]},
                       ("MODEL",), "advanced/loaders"),
        "CLIPLoader": ({"clip_name": [["(the model's own)"]], "type": [["stable_diffusion", "sd3", "flux"]]},
                       ("CLIP",), "advanced/loaders"),
        "DualCLIPLoader": ({"clip_name1": [["(the model's own)"]], "clip_name2": [["(the model's own)"]],
                            "type": [["sdxl", "sd3", "flux"]]}, ("CLIP",), "advanced/loaders"),
        "VAELoader": ({"vae_name": [["(the model's own)"]]}, ("VAE",), "loaders"),
        "LoraLoader": ({"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [choices.loras],
                        "strength_model": _float(-100.0, 100.0, 1.0), "strength_clip": _float(-100.0, 100.0, 1.0)},
                       ("MODEL", "CLIP"), "loaders"),
        "LoraLoaderModelOnly": ({"model": ["MODEL"], "lora_name": [choices.loras],
                                 "strength_model": _float(-100.0, 100.0, 1.0)}, ("MODEL",), "loaders"),
        "CLIPSetLastLayer": ({"clip": ["CLIP"], "stop_at_clip_layer": _int(-24, -1, -1)}, ("CLIP",),
                             "conditioning"),
        "CLIPTextEncode": ({"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}, ("CONDITIONING",),
                           "conditioning"),
        "FluxGuidance": ({"conditioning": ["CONDITIONING"], "guidance": _float(0.0, 100.0, 3.5, 0.1)},
                         ("CONDITIONING",), "advanced/conditioning/flux"),
        "ConditioningZeroOut": ({"conditioning": ["CONDITIONING"]}, ("CONDITIONING",), "advanced/conditioning"),
        "ControlNetLoader": ({"control_net_name": [choices.controlnets]}, ("CONTROL_NET",), "loaders"),
        "ControlNetApply": ({"conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                             "strength": _float(0.0, 10.0, 1.0)}, ("CONDITIONING",), "conditioning/controlnet"),
        "ControlNetApplyAdvanced": ({"positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
                                     "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                                     "strength": _float(0.0, 10.0, 1.0), "start_percent": _float(0.0, 1.0, 0.0),
                                     "end_percent": _float(0.0, 1.0, 1.0)}, ("CONDITIONING", "CONDITIONING"),
                                    "conditioning/controlnet"),
        "EmptyLatentImage": (size, ("LATENT",), "latent"),
        "EmptySD3LatentImage": (size, ("LATENT",), "latent/sd3"),
        "LoadImage": ({"image": [choices.images, {"image_upload": True}]}, ("IMAGE", "MASK"), "image"),
        "LoadImageMask": ({"image": [choices.images, {"image_upload": True}],
                           "channel": [["alpha", "red", "green", "blue"]]}, ("MASK",), "mask"),
        "VAEEncode": ({"pixels": ["IMAGE"], "vae": ["VAE"]}, ("LATENT",), "latent"),
        "VAEEncodeForInpaint": ({"pixels": ["IMAGE"], "vae": ["VAE"], "mask": ["MASK"],
                                 "grow_mask_by": _int(0, 64, 6)}, ("LATENT",), "latent/inpaint"),
        "SetLatentNoiseMask": ({"samples": ["LATENT"], "mask": ["MASK"]}, ("LATENT",), "latent/inpaint"),
        "KSampler": (sampler, ("LATENT",), "sampling"),
        "LatentUpscale": ({"samples": ["LATENT"], "upscale_method": [list(LATENT_METHODS)],
                           "width": _int(0, 8192, 1024, 8), "height": _int(0, 8192, 1024, 8),
                           "crop": [["disabled", "center"]]}, ("LATENT",), "latent"),
        "LatentUpscaleBy": ({"samples": ["LATENT"], "upscale_method": [list(LATENT_METHODS)],
                             "scale_by": _float(0.01, 8.0, 1.5)}, ("LATENT",), "latent"),
        "VAEDecode": ({"samples": ["LATENT"], "vae": ["VAE"]}, ("IMAGE",), "latent"),
        "SaveImage": ({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, (), "image"),
        "PreviewImage": ({"images": ["IMAGE"]}, (), "image"),
    }


def object_info(choices: Choices, only: str | None = None) -> dict[str, Any]:
    """`/object_info`: the node classes Easel runs, in ComfyUI's shape."""
    info = {}
    for name, (required, outputs, category) in node_inputs(choices).items():
        if only is not None and name != only:
            continue
        info[name] = {"input": {"required": required, "optional": {}}, "input_order": {"required": list(required)},
                      "output": list(outputs), "output_is_list": [False] * len(outputs),
                      "output_name": list(outputs), "name": name, "display_name": name,
                      "description": "", "python_module": "nodes", "category": category,
                      "output_node": name in OUTPUT_NODES, "deprecated": False, "experimental": False}
    return info


def validate(prompt: Any, choices: Choices) -> list[str]:
    """ComfyUI's checks of a workflow: known node classes, required inputs present, links to existing nodes'
    outputs of the right type, numbers in range and choices from the lists; the output nodes' ids."""
    if not isinstance(prompt, dict) or not prompt:
        raise GraphError("No prompt provided", kind="no_prompt", details="`prompt` must be the API-format workflow")
    specs = node_inputs(choices)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
            raise GraphError(f"Node {node_id!r} must be an object with `class_type` and `inputs`.",
                             details=f"Node ID '#{node_id}'")
        class_type = node.get("class_type")
        if class_type not in specs:
            raise GraphError(f"Cannot execute because node {class_type} does not exist.",
                             details=f"Node ID '#{node_id}'")
    outputs = [node_id for node_id, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        raise GraphError("Prompt has no outputs", kind="prompt_no_outputs")
    for node_id, node in prompt.items():
        required, _, _ = specs[node["class_type"]]
        for name, spec in required.items():
            _check_input(prompt, specs, node_id, node, name, spec, outputs)
    return outputs


def _check_input(prompt, specs, node_id, node, name, spec, outputs) -> None:
    class_type, inputs = node["class_type"], node.get("inputs", {})

    def fail(kind: str, message: str) -> GraphError:
        return GraphError(message, node_id, class_type, kind, f"{name}", name)

    if name not in inputs:
        if isinstance(spec[0], str) and spec[0] in ("INT", "FLOAT", "STRING") and "default" in spec[-1]:
            return  # ComfyUI fills a widget's default
        raise fail("required_input_missing", f"Required input is missing: {name}")
    value, kind = inputs[name], spec[0]
    if isinstance(value, list):  # a link: [node id, output index]
        if len(value) != 2 or str(value[0]) not in prompt or not isinstance(value[1], int):
            raise fail("bad_linked_input", f"Bad linked input, must be a length-2 list of [node_id, slot_index]: "
                                           f"{name}")
        source = prompt[str(value[0])]
        produced = specs[source["class_type"]][1]
        if not 0 <= value[1] < len(produced) or (isinstance(kind, str) and produced[value[1]] != kind):
            got = produced[value[1]] if 0 <= value[1] < len(produced) else "nothing"
            raise fail("return_type_mismatch", f"Return type mismatch between linked nodes: {name}, received_type"
                                               f"({got}) mismatch input_type({kind})")
        return
    if isinstance(kind, list):
        if value not in kind:
            raise fail("value_not_in_list", f"Value not in list: {name}: '{value}' not in {kind}")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            raise fail("invalid_input_type", f"Failed to convert an input value to a {kind} value: {name}, {value!r}")
        options = spec[1]
        if value < options["min"]:
            raise fail("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}: {name}")
        if value > options["max"]:
            raise fail("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}: {name}")
    elif kind == "STRING" and not isinstance(value, str):
        raise fail("invalid_input_type", f"Failed to convert an input value to a STRING value: {name}, {value!r}")
    elif kind not in ("INT", "FLOAT", "STRING"):
        raise fail("bad_linked_input", f"{name} must be linked to a node's {kind} output")


@dataclasses.dataclass
class Plan:
    """What a workflow asks for, as Easel's request, and which of its nodes stand for which part of the run (the
    progress messages name them; `nodes`: the node that set each of the request's parameters, for errors)."""

    request: ImageRequest
    sampler: str  # the node whose steps the progress counts (the last sampler)
    decoder: str
    outputs: list[str]
    loaders: list[str]
    warnings: list[str]
    nodes: dict[str, str]


class _Reader:
    """Walks a checked workflow back from its output, collecting the request's fields and who set them."""

    def __init__(self, prompt: dict, load_image: Callable[[str, str, str], Any]):
        self.prompt, self.load_image = prompt, load_image
        self.warnings: list[str] = []
        self.loaders: list[str] = []
        self.nodes: dict[str, str] = {}
        self.controls: dict[str, ControlUnit] = {}
        self.extra: dict[str, Any] = {}
        self.guidance: float | None = None
        self.steps = 0

    def node(self, link, want: tuple[str, ...], user: str, name: str) -> tuple[str, dict]:
        self.steps += 1
        if self.steps > 4 * len(self.prompt) + 16:  # every link was followed more than a graph without a loop needs
            raise GraphError("The workflow's links go round in a loop.", user, self.prompt[user]["class_type"],
                             "unsupported_graph", name, name)
        node_id = str(link[0])
        node = self.prompt[node_id]
        if node["class_type"] not in want:
            raise GraphError(f"Easel runs workflows that are one generation; {node['class_type']} cannot feed {name} "
                             f"here (it takes {', '.join(want)}).", user, self.prompt[user]["class_type"],
                             "unsupported_graph", name, name)
        return node_id, node

    def value(self, node: dict, name: str, default=None):
        return node.get("inputs", {}).get(name, default)

    def model(self, link, user: str) -> tuple[str, dict[str, float]]:
        """The model a sampler runs, and the LoRAs on the way to it."""
        want = ("CheckpointLoaderSimple", "UNETLoader", "LoraLoader", "LoraLoaderModelOnly")
        loras: dict[str, float] = {}
        node_id, node = self.node(link, want, user, "model")
        while node["class_type"] in ("LoraLoader", "LoraLoaderModelOnly"):
            name = self.value(node, "lora_name")
            loras[name[:-len(".safetensors")] if name.endswith(".safetensors") else name] = self.value(
                node, "strength_model", 1.0)
            self.nodes.setdefault("loras", node_id)
            node_id, node = self.node(self.value(node, "model"), want, node_id, "model")
        self.loaders.append(node_id)
        self.nodes["model"] = node_id
        return self.value(node, "ckpt_name") or self.value(node, "unet_name"), loras

    def text(self, link, user: str, name: str) -> str:
        """A conditioning's text; the nodes on its way set ControlNet units and FLUX's guidance."""
        want = ("CLIPTextEncode", "ControlNetApply", "ControlNetApplyAdvanced", "FluxGuidance", "ConditioningZeroOut")
        node_id, node = self.node(link, want, user, name)
        kind = node["class_type"]
        if kind == "CLIPTextEncode":
            self.clip(self.value(node, "clip"), node_id)
            return self.value(node, "text", "")
        if kind == "ConditioningZeroOut":
            return ""
        if kind == "FluxGuidance":
            self.guidance = self.value(node, "guidance", 3.5)
            self.nodes["guidance_scale"] = node_id
            return self.text(self.value(node, "conditioning"), node_id, "conditioning")
        if node_id not in self.controls:
            self.controls[node_id] = self.control(node_id, node)
            self.nodes.setdefault("control", node_id)
        if kind == "ControlNetApply":
            return self.text(self.value(node, "conditioning"), node_id, "conditioning")
        side = "negative" if link[1] == 1 else "positive"
        return self.text(self.value(node, side), node_id, side)

    def clip(self, link, user: str) -> None:
        node_id, node = self.node(link, ("CheckpointLoaderSimple", "CLIPLoader", "DualCLIPLoader", "LoraLoader",
                                         "CLIPSetLastLayer"), user, "clip")
        if node["class_type"] == "CLIPSetLastLayer":
            stop = self.value(node, "stop_at_clip_layer", -1)
            if stop < -1:
                self.extra["clip_skip"] = -stop - 1
                self.nodes["clip_skip"] = node_id
            self.clip(self.value(node, "clip"), node_id)
        elif node["class_type"] == "LoraLoader":
            self.clip(self.value(node, "clip"), node_id)
        elif node["class_type"] != "CheckpointLoaderSimple" and node_id not in self.loaders:
            self.loaders.append(node_id)
            self.warnings.append(f"{node['class_type']} (node {node_id}): Easel runs the model's own text encoders")

    def control(self, node_id: str, node: dict) -> ControlUnit:
        _, loader = self.node(self.value(node, "control_net"), ("ControlNetLoader",), node_id, "control_net")
        image_id, picture = self.node(self.value(node, "image"), ("LoadImage",), node_id, "image")
        return ControlUnit(model=self.value(loader, "control_net_name"), preprocessor="none",
                           image=self.load_image(self.value(picture, "image"), image_id, "image"),
                           weight=self.value(node, "strength", 1.0), start=self.value(node, "start_percent", 0.0),
                           end=self.value(node, "end_percent", 1.0))

    def mask(self, link, user: str):
        from PIL import ImageChops

        node_id, node = self.node(link, ("LoadImage", "LoadImageMask"), user, "mask")
        self.nodes["mask"] = node_id
        picture = self.load_image(self.value(node, "image"), node_id, "image")
        channel = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[self.value(node, "channel", "alpha")]
        if channel != "A":
            return picture.convert("RGB").getchannel(channel)
        if "A" not in picture.getbands():  # ComfyUI's mask from alpha is 1 - alpha: the transparent area
            raise GraphError("The mask's image has no alpha channel: nothing to repaint.", node_id,
                             node["class_type"], "invalid_input_type", "image", "image")
        return ImageChops.invert(picture.getchannel("A"))

    def input_image(self, latent_id: str, latent: dict, denoise: float, fields: dict[str, Any]) -> str:
        """The mode a sampler's latent input makes (an empty latent, an encoded picture, a masked one), with its
        image, mask and strength in `fields`."""
        from PIL import ImageFilter

        kind = latent["class_type"]
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            fields.update(width=self.value(latent, "width", 512), height=self.value(latent, "height", 512),
                          num_images=self.value(latent, "batch_size", 1))
            self.nodes.update(width=latent_id, height=latent_id, size=latent_id, n=latent_id)
            return "generate"
        mask = None
        if kind == "SetLatentNoiseMask":
            mask = self.mask(self.value(latent, "mask"), latent_id)
            latent_id, latent = self.node(self.value(latent, "samples"), ("VAEEncode",), latent_id, "samples")
        elif kind == "VAEEncodeForInpaint":
            mask = self.mask(self.value(latent, "mask"), latent_id)
            grow = self.value(latent, "grow_mask_by", 6)
            if grow:
                mask = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
        image_id, picture = self.node(self.value(latent, "pixels"), ("LoadImage",), latent_id, "pixels")
        self.nodes["image"] = image_id
        fields["image"] = self.load_image(self.value(picture, "image"), image_id, "image").convert("RGB")
        fields["strength"] = denoise
        if mask is None:
            return "vary"
        fields["mask"] = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
        if kind == "VAEEncodeForInpaint":  # as ComfyUI encodes it: the area to repaint grey first
            fields["image"].paste((128, 128, 128), mask=fields["mask"])
        return "edit"


def read(prompt: dict, outputs: list[str], load_image: Callable[[str, str, str], Any]) -> Plan:
    """The checked workflow as one request (`load_image(name, node id, input)`: an uploaded image by its name)."""
    reader = _Reader(prompt, load_image)
    decoders = {reader.node(reader.value(prompt[out], "images"), ("VAEDecode",), out, "images")[0] for out in outputs}
    if len(decoders) > 1:
        raise GraphError("Easel runs workflows that are one generation: these outputs show different images.",
                         outputs[-1], prompt[outputs[-1]]["class_type"], "unsupported_graph", "images", "images")
    decoder = decoders.pop()
    sampler_id, sampler = reader.node(reader.value(prompt[decoder], "samples"), ("KSampler",), decoder, "samples")
    fields: dict[str, Any] = {}
    latents = ("EmptyLatentImage", "EmptySD3LatentImage", "VAEEncode", "VAEEncodeForInpaint", "SetLatentNoiseMask")
    latent_id, latent = reader.node(reader.value(sampler, "latent_image"), (*latents, "LatentUpscale",
                                                                            "LatentUpscaleBy"), sampler_id,
                                    "latent_image")
    first_id, first = sampler_id, sampler
    if latent["class_type"] in ("LatentUpscale", "LatentUpscaleBy"):  # the hires fix: a second sampler over it
        first_id, first = reader.node(reader.value(latent, "samples"), ("KSampler",), latent_id, "samples")
        fields.update(hires_upscaler=LATENT_METHODS[reader.value(latent, "upscale_method", "nearest-exact")],
                      hires_strength=reader.value(sampler, "denoise", 1.0),
                      hires_steps=reader.value(sampler, "steps", 20))
        if latent["class_type"] == "LatentUpscaleBy":
            fields["hires_scale"] = reader.value(latent, "scale_by", 1.5)
        else:
            fields["hires_size"] = f"{reader.value(latent, 'width')}x{reader.value(latent, 'height')}"
        reader.nodes.update(hires_scale=latent_id, hires_size=latent_id, hires_strength=sampler_id)
        latent_id, latent = reader.node(reader.value(first, "latent_image"), latents[:2], first_id, "latent_image")
    model, loras = reader.model(reader.value(first, "model"), first_id)
    positive = reader.text(reader.value(first, "positive"), first_id, "positive")
    negative = reader.text(reader.value(first, "negative"), first_id, "negative")
    mode = reader.input_image(latent_id, latent, reader.value(first, "denoise", 1.0), fields)
    name, schedule = reader.value(first, "sampler_name", "euler"), reader.value(first, "scheduler", "normal")
    if schedule not in ("normal", "karras", "simple", "sgm_uniform", "ddim_uniform"):
        reader.warnings.append(f"scheduler {schedule!r} (node {first_id}): the sampler's own schedule was used")
    request = ImageRequest(
        prompt=positive, negative_prompt=negative or None, model=model, loras=loras, mode=mode,
        seed=reader.value(first, "seed", 0), num_inference_steps=reader.value(first, "steps", 20),
        guidance_scale=reader.guidance if reader.guidance is not None else reader.value(first, "cfg", 8.0),
        scheduler=f"{SAMPLERS[name]}_karras" if schedule == "karras" else SAMPLERS[name],
        control=list(reader.controls.values()), extra=dict(reader.extra), **fields)
    return Plan(request, sampler_id, decoder, outputs, reader.loaders, reader.warnings,
                {"default": first_id, **reader.nodes})
