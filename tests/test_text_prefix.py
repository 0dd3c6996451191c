"""The pooled CLIP-tower embedding on a text prefix (`DreamModel.text_embedding`) equals the
full 77-position tower's (`embed_text`), with the same gradients: the tower is causal and
pools at the first end-of-text token, so later positions cannot matter."""
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.tokenizers.base import first_eot_position
from dream_jax.train.components import build_model
from tests.helpers import model_config

EOT = 7


def _ids(rows_eot, ctx, vocab, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, EOT, (len(rows_eot), ctx)).astype(np.int32)
  for r, e in enumerate(rows_eot):
    if e is not None:
      ids[r, e] = EOT
      ids[r, e + 1:] = rng.integers(0, vocab, ctx - e - 1)   # anything after the EOT
  return jnp.asarray(ids)


def test_prefix_embedding_and_gradients_equal_the_full_tower():
  model = build_model(model_config())
  variables = model.init(jax.random.key(0))
  ctx = model.spec.text_ctx
  assert model.text_sizes[-1] == ctx and len(model.text_sizes) > 1
  for rows in ([3, 5], [3, ctx // 2], [0, None]):       # short, middle bucket, no EOT (last)
    ids = _ids(rows, ctx, model.spec.text_vocab)
    eot = first_eot_position(ids, EOT).astype(jnp.int32)
    full = model.embed_text(variables, ids, eot)[0]
    pref = model.text_embedding(variables, ids, eot)
    np.testing.assert_allclose(pref, full, atol=2e-6, rtol=1e-5)
    if rows != [3, ctx // 2]:
      continue                                            # gradients: one case (compile time)

    def loss(params, fn):
      v = dict(variables, params=params)
      return (fn(v) * jnp.arange(1.0, 1.0 + full.shape[-1])).sum()
    g_full = jax.grad(loss)(variables["params"], lambda v: model.embed_text(v, ids, eot)[0])
    g_pref = jax.grad(loss)(variables["params"], lambda v: model.text_embedding(v, ids, eot))
    for a, b in zip(jax.tree.leaves(g_pref), jax.tree.leaves(g_full)):
      np.testing.assert_allclose(a, b, atol=5e-6, rtol=1e-4)
