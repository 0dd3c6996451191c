"""Frozen pretrained components: parity with the reference implementations, layouts, configs.

References (requirements-parity.txt): diffusers.AutoencoderKL and transformers.T5EncoderModel
built with random weights in the real architectures at reduced size, saved with
`save_pretrained` and loaded through our readers; all-MiniLM-L6-v2 with its real weights
against transformers.BertModel + mean pooling + L2 norm (sentence-transformers' pipeline for
this model). Outputs must agree within 1e-4 relative in float32. Under CI=true a missing
reference package fails the test instead of skipping it.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.pretrained import frozen, loading, minilm, t5, vae

RTOL = 1e-4


def require(module: str):
  """pytest.importorskip, except under CI=true where a missing reference is a failure."""
  if os.environ.get("CI") == "true":
    try:
      return __import__(module, fromlist=["_"])
    except ImportError as e:
      pytest.fail(f"reference package {module!r} missing under CI=true "
                  f"(pip install -r requirements-parity.txt): {e}")
  return pytest.importorskip(module)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _perturb_norms(torch, model, scale=0.1):
  # Default inits put norms at (1, 0): perturb them so a swapped scale/bias would be caught.
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(scale * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------------- VAE
def _tiny_diffusers_vae(torch, diffusers):
  torch.manual_seed(0)
  m = diffusers.AutoencoderKL(
      block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
      up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8,
      latent_channels=4).eval()
  _perturb_norms(torch, m)
  return m


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_vae_parity_with_diffusers(tmp_path, fmt):
  torch = require("torch")
  diffusers = require("diffusers")
  ref = _tiny_diffusers_vae(torch, diffusers)
  ref.save_pretrained(tmp_path, safe_serialization=(fmt == "safetensors"))
  assert (tmp_path / f"diffusion_pytorch_model.{fmt}").exists()
  cfg, params = vae.read_vae_dir(str(tmp_path))
  assert cfg.stride == 4 and cfg.norm_num_groups == 8
  x = np.random.RandomState(0).uniform(-1, 1, (2, 24, 32, 3)).astype(np.float32)
  model = vae.SDVAE(cfg)
  moments = np.asarray(model.encode(params, x))
  with torch.no_grad():
    post = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
    mean = post.mean.permute(0, 2, 3, 1).numpy()
    logvar = post.logvar.permute(0, 2, 3, 1).numpy()
    dec = ref.decode(post.mean).sample.permute(0, 2, 3, 1).numpy()
  ours_dec = np.asarray(model.decode(params, mean))
  errs = dict(mean=rel_err(moments[:, 0], mean), logvar=rel_err(moments[:, 1], logvar),
              decode=rel_err(ours_dec, dec))
  print(f"VAE parity ({fmt}) max rel diff:", errs)
  assert moments.shape == (2, 2, 6, 8, 4) and ours_dec.shape == x.shape
  assert max(errs.values()) < RTOL, errs


def test_vae_sampling_and_scaling():
  mom = jnp.stack([jnp.full((2, 3, 3, 4), 0.5), jnp.full((2, 3, 3, 4), -1.0)], axis=1)
  z = vae.sample_posterior(mom, jax.random.key(0), 0.18215)
  noise = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  np.testing.assert_allclose(z, (0.5 + np.exp(-0.5) * noise) * 0.18215, rtol=1e-6)


def test_vae_full_size_layout_matches_diffusers():
  """The converter's key/shape plan covers sd-vae-ft-ema exactly (meta device, no weights)."""
  torch = require("torch")
  diffusers = require("diffusers")
  with torch.device("meta"):
    ref = diffusers.AutoencoderKL(**{k: v for k, v in vae.SD_VAE_CONFIG.to_diffusers().items()
                                     if k not in ("_class_name",)})
  shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  plan = loading.plan_conversion(shapes, vae.vae_param_shapes(vae.SD_VAE_CONFIG))
  assert len(plan) == len(shapes)
  n_ref = sum(int(np.prod(s)) for s in shapes.values())
  n_ours = sum(int(np.prod(v.shape)) for v in
               jax.tree.leaves(vae.vae_param_shapes(vae.SD_VAE_CONFIG)))
  assert n_ours == n_ref
  # Legacy (diffusers < 0.14) attention names map onto the same leaves.
  legacy = {k.replace("to_q", "query").replace("to_out.0", "proj_attn"): v
            for k, v in shapes.items()}
  loading.plan_conversion(legacy, vae.vae_param_shapes(vae.SD_VAE_CONFIG),
                          rename=vae._legacy_attention_names)


# ----------------------------------------------------------------------------------- T5
def _tiny_hf_t5(torch, transformers, ff):
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=64, d_model=40, d_kv=16, num_heads=3, d_ff=48,
                              num_layers=2, feed_forward_proj=ff,
                              relative_attention_num_buckets=8,
                              relative_attention_max_distance=16)
  m = transformers.T5EncoderModel(cfg).eval()
  _perturb_norms(torch, m)
  return m


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])  # T5 v1.0 and v1.1
def test_t5_parity_with_transformers(tmp_path, ff):
  torch = require("torch")
  transformers = require("transformers")
  ref = _tiny_hf_t5(torch, transformers, ff)
  ref.save_pretrained(tmp_path)
  cfg, params = t5.read_t5_dir(str(tmp_path))
  assert cfg.num_heads * cfg.d_kv != cfg.d_model and cfg.feed_forward_proj == ff
  rs = np.random.RandomState(0)
  ids = rs.randint(2, 64, (2, 40)).astype(np.int32)  # 40 > max_distance: log buckets used
  mask = np.ones_like(ids, bool)
  mask[1, 23:] = False
  ids[1, 23:] = 0
  out = np.asarray(jax.jit(t5.T5Encoder(cfg).apply)({"params": params}, ids, mask))
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(),
               attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  err = rel_err(out, want)
  print(f"T5 parity ({ff}) max rel diff: {err:.2e}")
  assert out.shape == (2, 40, 40) and err < RTOL


def test_t5_relative_buckets_match_transformers():
  torch = require("torch")
  require("transformers")
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 300)[None, :]
  want = T5Attention._relative_position_bucket(torch.from_numpy(rel), True, 32, 128).numpy()
  np.testing.assert_array_equal(t5.relative_position_bucket(jnp.asarray(rel), True, 32, 128),
                                want)


@pytest.mark.parametrize("name,ff,d_ff", [("t5-large", "relu", 4096),
                                          ("t5-v1_1-large", "gated-gelu", 2816)])
def test_t5_large_layout_matches_transformers(name, ff, d_ff):
  """Key/shape plan against the real T5-Large layouts (meta device, no weights)."""
  torch = require("torch")
  transformers = require("transformers")
  cfg = t5.T5Config(d_ff=d_ff, feed_forward_proj=ff)
  hf_cfg = transformers.T5Config(**{k: v for k, v in cfg.to_hf().items()
                                    if k not in ("architectures",)})
  with torch.device("meta"):
    ref = transformers.T5ForConditionalGeneration(hf_cfg)  # a full checkpoint's key set
  shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  target = t5.t5_param_shapes(cfg)
  plan = loading.plan_conversion(shapes, target, ignore=t5._T5_IGNORE)
  assert len(plan) == len(jax.tree.leaves(target))
  enc_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(target))
  with torch.device("meta"):
    enc = transformers.T5EncoderModel(hf_cfg)
  assert enc_params == sum(p.numel() for p in enc.parameters())


def test_t5_tokenizer_json_matches_transformers(tmp_path):
  transformers = require("transformers")
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  vocab = ["<pad>", "</s>", "<unk>"] + [chr(c) for c in range(97, 123)] + ["▁"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
  tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                     special_tokens=[("</s>", 1)])
  tok.save(str(tmp_path / "tokenizer.json"))
  ours = t5.T5Tokenizer.from_dir(str(tmp_path), max_length=12)
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                             pad_token="<pad>", eos_token="</s>",
                                             unk_token="<unk>")
  texts = ["abc", "a much longer caption", "", "xyz!"]
  ids, mask = ours(texts)
  want = ref(texts, padding="max_length", truncation=True, max_length=12)
  np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
  np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool))
  assert ids[1, -1] == 1  # truncation keeps </s>


def test_t5_byte_tokenizer():
  ids, mask = t5.T5Tokenizer.bytes(8)(["ab", "abcdefghij"])
  np.testing.assert_array_equal(ids, [[100, 101, 1, 0, 0, 0, 0, 0],
                                      [100, 101, 102, 103, 104, 105, 106, 1]])
  np.testing.assert_array_equal(mask.sum(1), [3, 8])


# ------------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm_params():
  return minilm.read_minilm_dir("")


def test_minilm_parity_with_sentence_transformers_pipeline(minilm_params):
  torch = require("torch")
  transformers = require("transformers")
  cfg, params = minilm_params
  directory = minilm.default_minilm_dir()
  texts = ["a photo of a cat", "a picture of a kitten", "stock prices fell sharply today",
           "The quick brown fox jumps over the lazy dog " * 6]
  ids, mask = minilm.MiniLMTokenizer(max_length=48)(texts)
  ref_tok = transformers.AutoTokenizer.from_pretrained(directory)
  want = ref_tok(texts, padding="max_length", truncation=True, max_length=48,
                 return_tensors="pt")
  np.testing.assert_array_equal(ids, want["input_ids"].numpy())
  np.testing.assert_array_equal(mask, want["attention_mask"].numpy().astype(bool))
  hidden = jax.jit(minilm.BertEncoder(cfg).apply)({"params": params}, ids, mask)
  emb = np.asarray(minilm.sentence_embedding(hidden, mask))
  ref = transformers.BertModel.from_pretrained(directory).eval()
  with torch.no_grad():
    out = ref(**want).last_hidden_state
    m = want["attention_mask"].unsqueeze(-1).float()
    ref_emb = torch.nn.functional.normalize((out * m).sum(1) / m.sum(1).clamp(min=1e-9),
                                            p=2, dim=1).numpy()
  errs = dict(hidden=rel_err(np.asarray(hidden)[mask], out.numpy()[mask]),
              embedding=rel_err(emb, ref_emb))
  print("MiniLM parity max rel diff:", errs)
  assert max(errs.values()) < RTOL, errs


def test_minilm_semantics_without_reference(minilm_params):
  cfg, params = minilm_params
  ids, mask = minilm.MiniLMTokenizer(max_length=16)(
      ["a photo of a cat", "a picture of a kitten", "stock prices fell sharply today"])
  emb = np.asarray(minilm.sentence_embedding(
      minilm.BertEncoder(cfg).apply({"params": params}, ids, mask), mask))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  assert emb[0] @ emb[1] > 0.7 > 0.3 > emb[0] @ emb[2]


# ---------------------------------------------------------------------------- converter
def test_convert_weights_cli_roundtrip(tmp_path):
  torch = require("torch")
  diffusers = require("diffusers")
  transformers = require("transformers")
  from dream_jax.tools import convert_weights
  src_vae, src_t5 = tmp_path / "vae_src", tmp_path / "t5_src"
  _tiny_diffusers_vae(torch, diffusers).save_pretrained(src_vae)
  _tiny_hf_t5(torch, transformers, "gated-gelu").save_pretrained(src_t5)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):  # T5 needs its tokenizer
    convert_weights.convert_t5(str(src_t5), str(tmp_path / "t5_fail"))
  # A minimal tokenizer.json completes the T5 directory.
  from tokenizers import Tokenizer, models
  Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>")).save(
      str(src_t5 / "tokenizer.json"))
  for kind, src in (("vae", src_vae), ("t5", src_t5)):
    dst = tmp_path / f"{kind}_out"
    assert convert_weights.main([f"--kind={kind}", f"--src={src}", f"--dst={dst}"]) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["format_version"] == 1
    read = vae.read_vae_dir if kind == "vae" else t5.read_t5_dir
    (_, direct), (_, converted) = read(str(src)), read(str(dst))
    jax.tree.map(np.testing.assert_array_equal, direct, converted)
    assert manifest["num_params"] == sum(np.size(a) for a in jax.tree.leaves(direct))
  assert convert_weights.main(["--kind=vae", "--src=/nonexistent", f"--dst={tmp_path}/x"]) == 1
  assert set(convert_weights.CONVERTERS) >= {"vae", "t5", "minilm"}


def test_convert_minilm(tmp_path, minilm_params):
  from dream_jax.tools import convert_weights
  dst = tmp_path / "minilm"
  assert convert_weights.main(["--kind=minilm", f"--dst={dst}"]) == 0
  cfg, params = minilm.read_minilm_dir(str(dst))
  assert cfg == minilm_params[0]
  jax.tree.map(np.testing.assert_array_equal, params, minilm_params[1])
  ids, mask = minilm.MiniLMTokenizer(str(dst), 8)(["a cat"])
  assert ids[0, 0] == 101 and mask.sum() == 4


def test_missing_files_name_the_file():
  from configs.common import base_config
  c = base_config()
  with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors.*"
                     r"config\.tokenizer\.vae_path|config\.tokenizer\.vae_path.*"
                     r"diffusion_pytorch_model\.safetensors"):
    frozen.ImageTokenizerVAE(c.tokenizer).load_params()
  c.tokenizer.vae_path = "/nonexistent/sd-vae"
  with pytest.raises(FileNotFoundError, match="sd-vae-ft-ema"):
    frozen.ImageTokenizerVAE(c.tokenizer).load_params()
  enc = frozen.FrozenTextEncoder(c.text)  # paper: T5-Large, architecture known without files
  assert enc.dim == 1024
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    enc.load_params()
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    enc.tokenize(["a cat"])


def test_bin_without_torch_says_so(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match="needs PyTorch.*safetensors"):
    loading.load_torch_bin("/x/diffusion_pytorch_model.bin")


# ------------------------------------------------------------------------ frozen / configs
def _runlocal_config():
  from configs.common import base_config, runlocal
  c = base_config()
  runlocal(c)
  return c


def test_runlocal_vae_path_end_to_end():
  """Images -> moments -> scaled posterior sample -> decode, jitted, tiny random VAE."""
  c = _runlocal_config()
  tok = frozen.ImageTokenizerVAE(c.tokenizer)
  assert (tok.stride, tok.latent_channels, tok.scale_factor) == (8, 4, 0.18215)
  params = tok.load_params()
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)

  @jax.jit
  def roundtrip(params, images, rng):
    moments = tok.encode_moments(params, images)
    latents = tok.sample_latents(moments, rng)
    return moments, latents, tok.decode_latents(params, latents)

  moments, latents, recon = roundtrip(params, images, jax.random.key(2))
  assert moments.shape == (2, 2, 4, 4, 4) and latents.shape == (2, 4, 4, 4)
  assert recon.shape == images.shape and bool(jnp.isfinite(recon).all())
  mean, logvar = moments[:, 0], moments[:, 1]
  noise = jax.random.normal(jax.random.key(2), mean.shape)
  np.testing.assert_allclose(latents, (mean + jnp.exp(0.5 * logvar) * noise) * 0.18215,
                             rtol=1e-5, atol=1e-6)
  # decode_latents un-scales inside: decoding scaled latents == module decode of unscaled.
  direct = tok.module.apply({"params": params}, latents / 0.18215,
                            method=vae.AutoencoderKL.decode)
  np.testing.assert_allclose(recon, direct, rtol=1e-5, atol=1e-5)
  c.tokenizer.sample_posterior = False
  mean_tok = frozen.ImageTokenizerVAE(c.tokenizer)
  np.testing.assert_allclose(mean_tok.sample_latents(moments, jax.random.key(3)),
                             mean * 0.18215, rtol=1e-6)
  c.tokenizer.dtype = "bfloat16"
  bf = frozen.ImageTokenizerVAE(c.tokenizer)
  m16 = jax.jit(bf.encode_moments)(params, images)
  assert m16.dtype == jnp.float32
  assert rel_err(m16, moments) < 0.05


def test_runlocal_t5_path_end_to_end():
  c = _runlocal_config()
  enc = frozen.FrozenTextEncoder(c.text)
  assert enc.dim == c.text.cond_dim == 32 and enc.vocab_size == 259
  params = enc.load_params()
  ids, mask = enc.tokenize(["a red circle", "a blue square above a green triangle, big"])
  assert ids.shape == mask.shape == (2, c.text.cond_len) and ids.dtype == np.int32
  assert mask.dtype == bool and ids[1, -1] == 1  # truncated, </s> kept
  feats = jax.jit(enc.apply)(params, ids, mask)
  assert feats.shape == (2, 16, 32) and feats.dtype == jnp.float32
  # Real-token features do not depend on what sits in the padded slots.
  ids2 = np.where(mask, ids, 7)
  np.testing.assert_allclose(jax.jit(enc.apply)(params, ids2, mask)[mask], feats[mask],
                             rtol=1e-5, atol=1e-6)
  tree = jax.tree.map(jnp.shape, params)
  assert "relative_attention_bias" in tree["encoder"]["block_0"]["layer_0"]["SelfAttention"]
  assert "wi_0" in tree["encoder"]["block_1"]["layer_1"]["DenseReluDense"]


def test_minilm_frozen_encoder_and_dim_check():
  from configs.common import base_config
  c = base_config()
  c.text.cond_encoder = "minilm"
  with pytest.raises(ValueError, match="config.text.cond_dim"):
    frozen.FrozenTextEncoder(c.text)
  c.text.update(cond_dim=384, cond_len=16)
  enc = frozen.FrozenTextEncoder(c.text)
  ids, mask = enc.tokenize(["a photo of a cat"])
  feats = enc.apply(enc.load_params(), ids, mask)
  assert feats.shape == (1, 16, 384) and enc.dim == 384
  c.text.cond_encoder = "small"
  with pytest.raises(ValueError, match="cond_encoder"):
    frozen.FrozenTextEncoder(c.text)
