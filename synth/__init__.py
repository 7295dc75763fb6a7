"""Labelled synthetic faces for real vs synthetic vs mixed training studies (`python -m synth --help`).

Modules
  labels      class = age bin (0-2, 3-9, 10-19, …, 60-69, 70+) x gender = 18 classes; drawing labels to sample
  config      SynthConfig (YAML `zoo/configs/synth_*.yaml` + CLI overrides); the generator id
  data        the real TRAINING split only (asserted) as a decoded array; scanning a synthetic folder
  ddpm        class-conditional diffusers UNet2DModel + DDPMScheduler, DDIM sampling, classifier-free guidance
  gan         conditional DCGAN (conditional BatchNorm G, spectral-norm projection D, hinge loss)
  train       the shared resumable training loop (safetensors + state.pt checkpoints, EMA)
  pipeline    a user's LOCAL pretrained diffusers text-to-image pipeline, prompted per age and gender
  sample      writes cache/synth/<name>/ PNGs + labels.csv + provenance.json, scanned as dataset synth_<name>
  fidelity    a real-trained zoo model judges a synthetic set: per-bin age MAE, gender agreement, Fréchet distance

CPU defaults (2-core machine, measured; see zoo/configs/synth_ddpm.yaml and synth_gan.yaml)
  ddpm  32 px, 2.6M-param UNet, batch 32: ~0.55 s/step -> 5000 steps ~ 46 min
  gan   64 px, width 32, batch 32:        ~0.3 s/step  -> 8000 steps ~ 40 min
"""
