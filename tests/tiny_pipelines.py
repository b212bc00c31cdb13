"""Tiny but real pipelines of the SD 1.5, SDXL, SD3, FLUX and Qwen-Image families, built from configs with random
weights and tokenizers written here (nothing comes from a hub), in the same layout `save_pretrained` gives real ones;
and their denoisers written as GGUF files, as ComfyUI-GGUF's converter writes them."""

from __future__ import annotations

import hashlib
import shutil
import string
from pathlib import Path

import torch


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ",.!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in string.ascii_lowercase] + [(c, -2.0) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_config(**kw):
    from transformers import CLIPTextConfig

    base = dict(bos_token_id=0, eos_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=100, projection_dim=32)
    base.update(kw)
    return CLIPTextConfig(**base)


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0))


def build_sd15():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(_clip_config()), tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def build_sdxl():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=72, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=2)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(_clip_config()),
        # the second encoder is wider than the first, as in SDXL (768 and 1280), which is how single-file loading
        # tells them apart
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(hidden_size=40)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler,
        image_encoder=None, feature_extractor=None,
    )


def _flow_vae(latent_channels: int, blocks: int = 1):
    """A tiny VAE; `blocks` 4 downsamples 8 times, as the real ones do (pipelines that resize their input images to
    a megapixel, or assume the factor, need it)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,) * blocks,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def build_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    # two blocks: the last one reads no ControlNet (context_pre_only), the first does
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(4),
        text_encoder=CLIPTextModelWithProjection(_clip_config(hidden_act="gelu")), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(hidden_act="gelu")), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(), tokenizer_3=t5_tokenizer(),
    )


def build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(1),
        text_encoder=CLIPTextModel(_clip_config()), tokenizer=clip_tokenizer(),
        text_encoder_2=_t5(), tokenizer_2=t5_tokenizer(),
    )


def _byte_level_tokenizer():
    """A Qwen2 tokenizer over the 256 byte symbols of byte-level BPE (no merges), with the chat tokens Qwen-Image's
    prompt template uses."""
    from transformers import Qwen2Tokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    symbols = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(rest))]
    tokenizer = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(symbols)}, merges=[], unk_token=None,
                               bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def build_qwen_image():
    """diffusers' own test configuration of Qwen-Image, at widths a GGUF block (32) divides."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(**_qwen_image_parts(heads=2, width=32), tokenizer=_byte_level_tokenizer())


def _qwen_tokenizer(chat: bool = False):
    """The byte-level tokenizer with Qwen's vision tokens (259-262), and a chat template where asked."""
    tokenizer = _byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    if chat:
        tokenizer.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def _qwen_vl(hidden: int = 16):
    """A Qwen2.5-VL encoder (text and vision) at diffusers' test sizes, its vision tokens those of `_qwen_tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {"hidden_size": hidden, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "rope_theta": 1e6, "vocab_size": 272, "bos_token_id": 256, "eos_token_id": 256,
            "rope_scaling": {"mrope_section": [1, 1, 2] if hidden == 16 else [2, 2, 4], "rope_type": "default",
                             "type": "default"}}
    config = Qwen2_5_VLConfig(text_config=text, vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16,
                                                               "num_heads": 2, "out_hidden_size": hidden},
                              hidden_size=hidden, vocab_size=272, vision_start_token_id=259, vision_end_token_id=260,
                              image_token_id=261, video_token_id=262, vision_token_id=261)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen_image_parts(heads: int, width: int) -> dict:
    """Qwen-Image's transformer, VAE and Qwen2.5-VL encoder at diffusers' test sizes (`width`: the encoder's)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=heads,
                                              joint_attention_dim=width, guidance_embeds=False,
                                              axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                text_encoder=_qwen_vl(width))


def _qwen_edit_parts():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    tokenizer = _qwen_tokenizer()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 chat_template=tokenizer.chat_template)
    return dict(**_qwen_image_parts(heads=3, width=16), tokenizer=tokenizer, processor=processor)


def build_qwen_image_edit():
    from diffusers import QwenImageEditPipeline

    return QwenImageEditPipeline(**_qwen_edit_parts())


def build_qwen_image_edit_plus():
    from diffusers import QwenImageEditPlusPipeline

    return QwenImageEditPlusPipeline(**_qwen_edit_parts())


def build_flux_kontext():
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**{**build_flux().components, "vae": _flow_vae(1, blocks=4)})


def build_chroma():
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    return ChromaPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(1),
                          text_encoder=_t5().eval(), tokenizer=t5_tokenizer(), image_encoder=None,
                          feature_extractor=None)


def _qwen3(causal: bool, layers: int = 2):
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=272, max_position_embeddings=512)
    return (Qwen3ForCausalLM if causal else Qwen3Model)(config).eval()


def build_z_image():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5,
                                           qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():  # made with torch.empty: fixed, as diffusers' tests fix them
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
                        latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159)
    return ZImagePipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                          text_encoder=_qwen3(causal=False), tokenizer=_qwen_tokenizer(chat=True))


def build_flux2_klein():
    """FLUX.2 [klein]: its Qwen3 encoder deep enough for the layers the pipeline reads (9, 18 and 27)."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                             up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1,
                             latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False)
    return Flux2KleinPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                              text_encoder=_qwen3(causal=True, layers=28), tokenizer=_qwen_tokenizer(chat=True),
                              is_distilled=True)


def _gemma_tokenizer():
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for c in string.ascii_letters + string.digits + ",.!?'-:\n":
        vocab.setdefault(c, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def _gemma2(hidden: int = 8, head_dim: int = 16, layers: int = 1):
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(head_dim=head_dim, hidden_size=hidden, intermediate_size=64,
                                    num_attention_heads=2, num_hidden_layers=layers, num_key_value_heads=2,
                                    vocab_size=80, max_position_embeddings=8192, attn_implementation="eager")).eval()


def _dc_vae():
    from diffusers import AutoencoderDC

    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                         encoder_block_types=("ResBlock", "EfficientViTBlock"),
                         decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                         decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                         decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                         decoder_layers_per_block=[1, 1], downsample_block_type="conv",
                         upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                         scaling_factor=0.41407)


def _sana_transformer(**kw):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    return SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                                  attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                  cross_attention_dim=8, caption_channels=8, sample_size=32, **kw)


def build_sana():
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    return SanaPipeline(transformer=_sana_transformer(), vae=_dc_vae(), scheduler=FlowMatchEulerDiscreteScheduler(
        shift=7.0), text_encoder=_gemma2(), tokenizer=_gemma_tokenizer())


def build_sana_sprint():
    from diffusers import SanaSprintPipeline, SCMScheduler

    return SanaSprintPipeline(transformer=_sana_transformer(qk_norm="rms_norm_across_heads", guidance_embeds=True),
                              vae=_dc_vae(), scheduler=SCMScheduler(), text_encoder=_gemma2(),
                              tokenizer=_gemma_tokenizer())


def build_lumina2():
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(0)
    transformer = Lumina2Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=2,
                                            num_attention_heads=1, num_kv_heads=1, multiple_of=16,
                                            ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
                                            axes_dim_rope=[4, 2, 2], cap_feat_dim=8)
    return Lumina2Pipeline(transformer=transformer, vae=_flow_vae(4, blocks=4).eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(),
                           text_encoder=_gemma2(head_dim=4, layers=2), tokenizer=_gemma_tokenizer())


def build_hidream():
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                                 num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                                                 caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
                                                 num_activated_experts=2, axes_dims_rope=(4, 2, 2),
                                                 max_resolution=(32, 32), llama_layers=(0, 1)).eval()
    vae = _flow_vae(4, blocks=4)
    clip = dict(hidden_act="gelu", max_position_embeddings=128)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=272,
                                         pad_token_id=256, bos_token_id=256, eos_token_id=256)).eval()
    llama_tokenizer = _byte_level_tokenizer()
    return HiDreamImagePipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(**clip)), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(**clip)), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5().eval(), tokenizer_3=t5_tokenizer(), text_encoder_4=llama, tokenizer_4=llama_tokenizer)


def save_gguf(denoiser, path: Path, quant: str, architecture: str) -> Path:
    """`denoiser`'s weights as a GGUF file in diffusers' key names: 2-D weights whose rows a block divides quantized
    as `quant` (Q8_0, Q4_0, ...), the rest kept as float32, as ComfyUI-GGUF keeps small tensors."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    for name, tensor in denoiser.state_dict().items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[-1] % block == 0:
            packed = gguf.quants.quantize(values, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}
# the families of 2025-26, at the sizes of diffusers' own tests (Qwen-Image-Edit's processor needs torchvision)
NEW_FAMILIES = {"flux-kontext": build_flux_kontext, "flux2-klein": build_flux2_klein, "z-image": build_z_image,
                "chroma": build_chroma, "hidream": build_hidream, "sana": build_sana, "sana-sprint": build_sana_sprint,
                "lumina2": build_lumina2, "qwen-image-edit": build_qwen_image_edit,
                "qwen-image-edit-plus": build_qwen_image_edit_plus}


def save_tiny(family: str, folder: Path) -> Path:
    BUILDERS[family]().save_pretrained(folder, safe_serialization=True)
    return folder


def install_in_hub_cache(folder: Path, hub_cache: Path, repo_id: str) -> Path:
    """Lay out a saved pipeline as `huggingface_hub` caches a download: models--org--name/{refs,snapshots}."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


LORA_TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0"],
                "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
                "transformer": ["to_q", "to_k", "to_v"]}


def save_random_lora(pipe, target: Path, seed: int, rank: int = 4, parts=("unet", "text_encoder")) -> Path:
    """A random LoRA (its B matrices not zero, so that it changes the image) on the attention of `parts` of `pipe`,
    saved as diffusers saves LoRAs. It uses peft's own `inject_adapter_in_model`, not the models' `add_adapter`:
    transformers raises the peft version that `add_adapter` demands from release to release (5.25 wants peft >= 0.22),
    while peft's function has kept its form since 0.7. The adapter, named after `target`, stays in the pipeline's
    modules; a later call adds another beside it."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    layers = {}
    for part in parts:
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=LORA_TARGETS[part])
        model = inject_adapter_in_model(config, getattr(pipe, part), adapter_name=target.stem)
        layers[f"{part}_lora_layers"] = get_peft_model_state_dict(model, adapter_name=target.stem)
    type(pipe).save_lora_weights(target.parent, weight_name=target.name, **layers)
    return target


def save_tiny_controlnet(family: str, folder: Path, seed: int) -> Path:
    """A ControlNet for the tiny pipeline of `family`: from its UNet's layout (`ControlNetModel.from_unet`) for SD
    1.5 and SDXL, from its transformer's for SD3 and FLUX (one block each), with random weights everywhere, the
    zero-initialised outputs and map embedding included, so that its map changes the image."""
    import diffusers

    denoiser = getattr(BUILDERS[family](), "unet" if family in ("sd15", "sdxl") else "transformer")
    torch.manual_seed(seed)
    if family in ("sd15", "sdxl"):
        # the map is downsampled to the latents' size: the tiny VAEs halve the picture once
        controlnet = diffusers.ControlNetModel.from_unet(denoiser, conditioning_embedding_out_channels=(4, 8))
    elif family == "sd3":
        shared = ("sample_size", "patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                  "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels")
        controlnet = diffusers.SD3ControlNetModel(**{k: denoiser.config[k] for k in shared}, num_layers=1)
    else:
        shared = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                  "pooled_projection_dim", "axes_dims_rope")
        controlnet = diffusers.FluxControlNetModel(**{k: denoiser.config[k] for k in shared}, num_layers=1,
                                                   num_single_layers=1)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if "controlnet_" in name or "conv_out" in name or "pos_embed_input" in name:
                param.normal_(0, 0.3)
    controlnet.save_pretrained(folder)
    return folder


def save_tiny_upscaler(folder: Path) -> Path:
    """A tiny SD x4 upscaler (StableDiffusionUpscalePipeline): a UNet over the low-resolution picture's size (4
    latent channels and the picture's 3), and a VAE that makes its latents 4 times as large."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=7,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, class_embed_type="timestep", num_class_embeds=1000)
    vae = AutoencoderKL(block_out_channels=[4, 8, 8], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        norm_num_groups=2, scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=CLIPTextModel(_clip_config()), tokenizer=clip_tokenizer(), unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000), max_noise_level=350,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02,
                                prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_ip_adapter(family: str, folder: Path, seed: int) -> Path:
    """An IP-Adapter for the tiny pipeline of `family`, laid out as on the hub (the adapter's weights beside an
    `image_encoder` folder): a tiny CLIP vision encoder, the projection of its image embedding into four prompt
    tokens, and the key and value projections of those tokens for each cross-attention layer of the UNet."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = BUILDERS[family]().unet
    torch.manual_seed(seed)
    embed = 16
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=embed))
    encoder.save_pretrained(folder / "image_encoder")
    cross = unet.config.cross_attention_dim
    weights = {"image_proj.proj.weight": torch.randn(cross * 4, embed) * 0.3,
               "image_proj.proj.bias": torch.zeros(cross * 4),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1
    channels = unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        hidden = channels[-1] if block is None else (
            list(reversed(channels))[block] if name.startswith("up_blocks") else channels[block])
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.3
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.3
        key_id += 2
    save_file(weights, str(folder / "ip-adapter.safetensors"))
    return folder
