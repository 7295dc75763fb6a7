"""The smallest local text-to-image diffusers pipeline that runs without `transformers`.

Stable Diffusion pipelines need `transformers` (CLIPTextModel, CLIPTokenizer), which this project does not install
(diffusers then only exposes dummy classes), so `synth.pipeline` cannot be tested offline with a tiny SD pipeline.
This stand-in keeps SD's structure and call signature — word tokenizer built from a vocab list + text encoder ->
`UNet2DConditionModel` cross-attention -> `AutoencoderKL` latents, a diffusers scheduler, `save_pretrained` /
`from_pretrained` folders with `model_index.json` — so the same prompt-driven code path is exercised. A test fixture:
the tests register it in `synth.pipeline.LOCAL_PIPELINES`; the product does not ship it. Real synthetic faces come
from a user's local pretrained pipeline (e.g. Stable Diffusion, with `transformers` installed) or from `synth.ddpm` /
`synth.gan`.
"""
from __future__ import annotations

import re

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

PAD, UNK = 0, 1


class WordTextEncoder(ModelMixin, ConfigMixin):
    """Lower-cased word tokenizer over a fixed vocabulary (ids 0 pad, 1 unknown) + embedding, positions and one
    transformer layer: [B, max_length, dim] hidden states, like a (very) small CLIP text tower."""

    @register_to_config
    def __init__(self, vocab: list[str], dim: int = 32, max_length: int = 16, heads: int = 2):
        super().__init__()
        self.index = {w: i + 2 for i, w in enumerate(vocab)}
        self.embed = nn.Embedding(len(vocab) + 2, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        L = self.config.max_length
        ids = torch.zeros(len(prompts), L, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", p.lower())[:L]
            ids[i, :len(words)] = torch.tensor([self.index.get(w, UNK) for w in words], dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer(self.embed(ids) + self.pos[: ids.shape[1]])


class TinyTextToImagePipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, text_encoder: WordTextEncoder, unet, vae, scheduler):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 5.0, generator: torch.Generator | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        b = len(prompts)
        neg = [""] * b if negative_prompt is None else (
            [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt))
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height = height or self.unet.config.sample_size * scale
        width = width or self.unet.config.sample_size * scale
        dev = self.unet.device
        cfg = guidance_scale > 1.0
        emb = self.text_encoder(self.text_encoder.tokenize(prompts + neg if cfg else prompts).to(dev))
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        latents = randn_tensor((b, self.unet.config.in_channels, height // scale, width // scale),
                               generator=generator, device=dev) * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents, latents]) if cfg else latents
            x = self.scheduler.scale_model_input(x, t)
            eps = self.unet(x, t, encoder_hidden_states=emb).sample
            if cfg:
                cond, unc = eps.chunk(2)
                eps = unc + guidance_scale * (cond - unc)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)


def build_tiny_pipeline(vocab: list[str], size: int = 16, seed: int = 0) -> TinyTextToImagePipeline:
    """A randomly initialised pipeline of ~250k parameters producing `size` px images."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    text = WordTextEncoder(vocab, dim=32, max_length=16)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=size)
    unet = UNet2DConditionModel(sample_size=size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, clip_sample=False, set_alpha_to_one=False)
    return TinyTextToImagePipeline(text_encoder=text, unet=unet, vae=vae, scheduler=sched)
