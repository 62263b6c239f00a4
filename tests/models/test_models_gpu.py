"""CUDA: the wrapper on a GPU model with the Triton kernels (impl="triton"; "auto" picks them for fp16/bf16).

The Triton forms are compared with the PyTorch chunked form on the same model (forward and the gradient
of the transfer loss), and decoding (Triton decode steps on the ring cache after a Triton prefill) with the
full pass.
"""

import pytest
import torch
from models_testlib import batch, outputs, perturb_feature_maps, save_tiny

from lolcats_lab.models import attention_modules, collect_transfer_mse, linearize, load_model, set_attention_mode
from tests.tolerances import TOLERANCES, check_close

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("gpu") / "llama")


def _pair(llama_dir, dtype, attention):
    models = []
    for impl in ("chunk", "triton"):  # "auto" takes Triton for fp16/bf16 only
        model, _ = load_model(llama_dir, dtype=dtype, device="cuda")
        linearize(model, attention=attention, window=16, feature_dim=16, impl=impl)
        models.append(model)
    perturb_feature_maps(models[0])
    models[1].load_state_dict(models[0].state_dict())
    return models


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["hybrid-tk", "hybrid-sw", "linear"])
def test_triton_matches_chunk_forward_and_transfer_grad(llama_dir, dtype, attention):
    ref, fast = _pair(llama_dir, dtype, attention)
    assert attention_modules(fast)[0].q_map.weight.is_cuda
    ids, _ = batch(B=2, T=100, left_pad=0)
    ids = ids.cuda()
    tol = dict(TOLERANCES[dtype])
    tol["ratio"] *= 10  # whole model (2 layers, bf16 weights): errors compound beyond one op
    check_close(f"{attention}-{dtype}", outputs(ref, ids), outputs(fast, ids), **tol)
    grads = []
    for model in (ref, fast):
        set_attention_mode(model, "transfer")
        model(input_ids=ids, use_cache=False)
        collect_transfer_mse(model).sum().backward()
        grads.append(attention_modules(model)[0].q_map.weight.grad.float())
    check_close("d q_map", grads[0], grads[1], **tol)


@pytest.mark.parametrize("attention", ["hybrid-tk", "linear"])
def test_cuda_decode_equals_forward(llama_dir, attention):
    _, model = _pair(llama_dir, torch.float32, attention)
    ids, _ = batch(B=2, T=70, left_pad=0)
    ids = ids.cuda()
    full = outputs(model, ids)
    out = model.generate(input_ids=ids[:, :40], max_new_tokens=30, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        again = model(input_ids=out.sequences[:, :-1], use_cache=False).logits[:, 39:]
    check_close("generate vs forward", again.float(), torch.stack(out.logits, 1).float(), **TOLERANCES[torch.float32])
    assert full.shape[1] == 70
