"""Frozen pretrained components ported to Flax, loaded from local files only.

  frozen.py   ImageTokenizerVAE, FrozenTextEncoder: what the model / trainer call
  vae.py      SD KL-VAE (diffusers AutoencoderKL layout)
  t5.py       T5 encoder v1.0/v1.1 (HF T5EncoderModel layout) + tokenizer
  minilm.py   all-MiniLM-L6-v2 (HF BertModel layout) + tokenizer
  loading.py  safetensors / .bin readers, torch -> Flax key and shape mapping
Conversion CLI: `python -m dream_jax.tools.convert_weights --kind={vae,t5,minilm}`.
"""
