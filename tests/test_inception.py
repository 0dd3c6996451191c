"""FID Inception-v3 parity with torch-fidelity 0.4.0 (random weights on both sides, the same
images), the weight converter, and the TF1 bilinear resize.

torch-fidelity is a test-only reference (requirements-nodeps.txt: installed with --no-deps;
its package __init__ imports torchvision, so only feature_extractor_inceptionv3.py and the
three small modules it imports are loaded, from the installed files)."""
import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.evaluators import inception

torch = pytest.importorskip("torch")


def _torch_fidelity_inception():
  if "torch_fidelity.feature_extractor_inceptionv3" in sys.modules:
    return sys.modules["torch_fidelity.feature_extractor_inceptionv3"]
  spec = importlib.util.find_spec("torch_fidelity")
  if spec is None:
    pytest.skip("torch-fidelity not installed (pip install --no-deps torch-fidelity==0.4.0)")
  root = os.path.dirname(spec.origin)
  if "torch_fidelity" not in sys.modules or not hasattr(sys.modules["torch_fidelity"],
                                                          "__path__"):
    pkg = types.ModuleType("torch_fidelity")   # skip __init__ (imports torchvision)
    pkg.__path__ = [root]
    sys.modules["torch_fidelity"] = pkg
  return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def _random_torch_extractor(tmp_path, seed=0):
  """torch-fidelity's extractor with torch's random initialisation (its constructor loads a
  weights file: it gets an empty one and a no-op load_state_dict)."""
  cls = _torch_fidelity_inception().FeatureExtractorInceptionV3
  empty = tmp_path / "empty.pth"
  torch.save({}, empty)
  torch.manual_seed(seed)
  orig = cls.load_state_dict
  cls.load_state_dict = lambda self, sd, *a, **k: None
  try:
    net = cls("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
              feature_extractor_weights_path=str(empty))
  finally:
    cls.load_state_dict = orig
  # Random BatchNorm affine parameters and running statistics, so every converted tensor
  # matters; variances near 1 keep 94 layers of activations in range.
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.8, 1.2)
        m.bias.uniform_(-0.1, 0.1)
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.8, 1.2)
    net.fc.bias.uniform_(-1, 1)
  return net.eval()


def test_resize_matches_torch_fidelity():
  _torch_fidelity_inception()
  from torch_fidelity.interpolate_compat_tensorflow import (
      interpolate_bilinear_2d_like_tensorflow1x)
  x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 24, 3)).astype(np.float32)
  ref = interpolate_bilinear_2d_like_tensorflow1x(torch.from_numpy(x).permute(0, 3, 1, 2),
                                                  size=(299, 299), align_corners=False)
  got = inception.resize_bilinear_tf1(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), ref.permute(0, 2, 3, 1).numpy(), rtol=0,
                             atol=1e-4)


def test_fid_inception_features_match_torch_fidelity(tmp_path):
  net = _random_torch_extractor(tmp_path)
  sd = net.state_dict()
  # The converter on a .pth file, as a user runs it on the published weights.
  pth = tmp_path / "inception.pth"
  torch.save(sd, pth)
  npz = tmp_path / "inception.npz"
  inception.main(["--torch_weights", str(pth), "--out", str(npz)])
  variables = inception.load_variables(str(npz))
  images = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
  with torch.no_grad():
    pool, unbiased, logits = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  out = jax.jit(inception.FIDInceptionV3().apply)(variables, jnp.asarray(images))
  for name, ref in (("pool", pool), ("logits_unbiased", unbiased), ("logits", logits)):
    ref = ref.numpy()
    got = np.asarray(out[name])
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got / scale, ref / scale, rtol=0, atol=1e-5, err_msg=name)
  assert np.abs(pool.numpy()).max() > 1e-3   # not a degenerate all-zero comparison
