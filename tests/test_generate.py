"""Generation through the bridge with its KV cache equals generation without it.

transformers 5.24 renamed the cache argument of attention blocks and TransformerLens 4.3's
bridge stopped filling the cache, so cached generation attended to the newest token alone;
these tests catch any such drift (and mechlens._compat refuses the known bad versions).
"""

import pytest
import torch


def _generate(model, prompt, use_cache, n=6):
    return model.generate(
        prompt, max_new_tokens=n, do_sample=False, use_past_kv_cache=use_cache, verbose=False
    )


def test_cached_generation_equals_uncached_tiny(tiny_model):
    # Random tiny models often repeat the last token whatever the context, so compare every
    # step's logits, not only the greedy tokens: an unfilled cache changes them (by ~0.3-0.5).
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    cached, plain = (
        tiny_model.generate(tokens, max_new_tokens=4, do_sample=False, use_past_kv_cache=c,
                            verbose=False, output_logits=True)
        for c in (True, False)
    )
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.sequences.shape == (1, tokens.shape[1] + 4)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(plain.logits), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cached_generation_equals_uncached_smollm2(smollm2):
    prompt = "I thought this movie was"
    cached = _generate(smollm2, prompt, True, n=12)
    plain = _generate(smollm2, prompt, False, n=12)
    assert cached == plain
    # garbage from an unfilled cache repeats one token ("going-----------")
    new = smollm2.to_str_tokens(cached, prepend_bos=False)[-12:]
    assert len(set(new)) > 3, new
