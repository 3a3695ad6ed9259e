"""Tiny real Diffusers pipelines with random weights, built offline (no downloads).

Every builder returns a pipeline of the real class with the scheduler that the released model
ships (SD 1.5: PNDM, SD3 / Flux: FlowMatchEuler) so tests can do
``pipe.scheduler = X.from_config(pipe.scheduler.config)``. Tokenizers are real
``CLIPTokenizer`` / ``T5TokenizerFast`` objects built from a tiny character-level vocabulary in
memory, so pipelines are called with a text prompt, not with precomputed embeddings.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

__all__ = [
    "SD15_SCHEDULER",
    "SDXL_SCHEDULER",
    "SD3_SCHEDULER",
    "FLUX_SCHEDULER",
    "TEXT_LEN",
    "clip_tokenizer",
    "save_tiny_clip_vision",
    "t5_tokenizer",
    "ddpm_pipeline",
    "dit_pipeline",
    "sd_pipeline",
    "sd_img2img_pipeline",
    "sdxl_pipeline",
    "sd3_pipeline",
    "sd3_img2img_pipeline",
    "flux_pipeline",
]

# The scheduler configs the released models ship (values as in their scheduler_config.json).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
    trained_betas=None,
)
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
    use_karras_sigmas=False,
    trained_betas=None,
)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
DIT_SCHEDULER = dict(  # facebook/DiT-XL-2-256 ships a DDIMScheduler
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
)
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

TEXT_LEN = 16  # tokenizer max length = text encoder positions (pass as max_sequence_length)
HIDDEN = 32


def clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): ids 0 / 1 are start / end of text."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LEN)


def t5_tokenizer() -> T5TokenizerFast:
    """A character-level unigram T5 tokenizer: <pad> 0, </s> 1, <unk> 2."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in string.ascii_lowercase] + [(c, -2.0) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=TEXT_LEN)


def _clip_config(vocab_size: int, projection_dim: int = HIDDEN) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=TEXT_LEN,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def save_tiny_clip_vision(path) -> str:
    """A random 2-layer CLIP vision tower with projection (32 x 32 input) saved to ``path``; returns the path."""
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return str(path)


def save_tiny_dinov2(path) -> str:
    """A random 2-layer DINOv2 ViT (hidden size 32, patch 14, 224 x 224 input) saved to ``path``; returns the path."""
    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=224
    )
    Dinov2Model(cfg).save_pretrained(path)
    return str(path)


def _t5_encoder(vocab_size: int) -> T5EncoderModel:
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels: int = 4, blocks: int = 2, **kwargs) -> AutoencoderKL:
    """A random AutoencoderKL that scales images down by 2 ** (blocks - 1) (SD's VAE: 4 blocks, 8x)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(4, 8, 8, 8)[:blocks],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=16,
        **kwargs,
    ).eval()


def _seed(seed: int):
    torch.manual_seed(seed)


def ddpm_pipeline(seed: int = 0, sample_size: int = 8) -> DDPMPipeline:
    """Pixel-space DDPM with a ``sample_size`` square UNet and SD 1.5's beta schedule (a DDPMScheduler)."""
    _seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_pipeline(seed: int = 0, sample_size: int = 8, vae_blocks: int = 2) -> DiTPipeline:
    """DiT (class-conditional latent transformer, learned sigma, 1,000 classes + the null class that
    DiTPipeline's guidance uses); 8x8x4 latents, 16x16 images by default (``sample_size``: the latents' side)."""
    _seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()
    vae = _vae(blocks=vae_blocks)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**DIT_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cond_unet(sample_size: int = 8, **kwargs) -> UNet2DConditionModel:
    """A 4-channel square text-conditioned UNet (SD 1.5 layout); ``kwargs`` add or override config keys."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        **kwargs,
    ).eval()


def _sd_components(seed: int, sample_size: int = 8, vae_blocks: int = 2) -> dict:
    _seed(seed)
    tok = clip_tokenizer()
    unet = _cond_unet(cross_attention_dim=HIDDEN, sample_size=sample_size)
    return dict(
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        vae=_vae(blocks=vae_blocks),
        text_encoder=CLIPTextModel(_clip_config(len(tok))).eval(),
        tokenizer=tok,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd_pipeline(seed: int = 0, sample_size: int = 8, vae_blocks: int = 2) -> StableDiffusionPipeline:
    """Stable Diffusion (SD 1.5 layout and scheduler config); 16x16 images, 8x8 latents by default."""
    pipe = StableDiffusionPipeline(**_sd_components(seed, sample_size, vae_blocks))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_img2img_pipeline(seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    pipe = StableDiffusionImg2ImgPipeline(**_sd_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """Stable Diffusion XL (two CLIPs, added time ids, SDXL's Euler config); 16x16 images, 8x8 latents."""
    _seed(seed)
    tok = clip_tokenizer()
    time_dim = 8
    unet = _cond_unet(
        cross_attention_dim=2 * HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + HIDDEN,
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tok))).eval(),
        tokenizer_2=clip_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd3_components(seed: int, sample_size: int = 8, vae_blocks: int = 2) -> dict:
    _seed(seed)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=HIDDEN,
        caption_projection_dim=HIDDEN,
        pooled_projection_dim=2 * HIDDEN,
        pos_embed_max_size=2 * sample_size,
    ).eval()
    vae = _vae(
        blocks=vae_blocks, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False
    )
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(_clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tok))).eval(),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(tok3)),
        tokenizer_3=tok3,
    )


def sd3_pipeline(seed: int = 0, sample_size: int = 8, vae_blocks: int = 2) -> StableDiffusion3Pipeline:
    """Stable Diffusion 3 (MMDiT, two CLIPs and a T5); 16x16 images, 8x8 latents by default."""
    pipe = StableDiffusion3Pipeline(**_sd3_components(seed, sample_size, vae_blocks))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_img2img_pipeline(seed: int = 0) -> StableDiffusion3Img2ImgPipeline:
    pipe = StableDiffusion3Img2ImgPipeline(**_sd3_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(seed: int = 0) -> FluxPipeline:
    """Flux (CLIP + T5, packed 2x2 latents, dynamic shifting); 16x16 images, 8x8 latents."""
    _seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=HIDDEN,
        pooled_projection_dim=HIDDEN,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=_t5_encoder(len(tok2)),
        tokenizer_2=tok2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
