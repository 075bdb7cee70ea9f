import torch

from cllmfs_trainer.training.cpu.attention_probe import (
    _attention_step,
    cpu_eager_attention_speedup,
    probe_cpu_attention,
)


def test_attention_probe_compares_the_same_function():
    grads = {}
    for implementation in ("sdpa", "eager"):
        q, k, v = (
            torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3)
        )
        _attention_step(implementation, q, k, v)
        grads[implementation] = q.grad
    torch.testing.assert_close(grads["sdpa"], grads["eager"], rtol=1e-4, atol=1e-5)
    assert cpu_eager_attention_speedup("float32", (2, 3, 16, 8), repeats=1) > 0
    assert probe_cpu_attention("float32") in ("sdpa", "eager")
