// torch_binding.cpp: the PyTorch glue for the course's CUDA kernels.
//
// Tensors in, FwdParams/BwdParams out, a launcher called, its message raised as a Python error.
// Input checks with friendly messages are done in Python (kernels/cuda_kernels.py) before this
// is reached; the TORCH_CHECKs here only guard against misuse of the raw extension.
// Built by kernels/cuda_kernels.py with torch.utils.cpp_extension.load, together with the .cu
// files, which need no torch headers themselves.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <vector>

#include "flash_params.h"

namespace {

flash::DType dtype_of(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return flash::DType::kFloat32;
        case at::kHalf: return flash::DType::kFloat16;
        case at::kBFloat16: return flash::DType::kBFloat16;
        default: TORCH_CHECK(false, "flash CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
    }
}

void check_qkv_like(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.dim() == 4, name, " must be (B, H, N, d)");
    TORCH_CHECK(t.stride(3) == 1, name, " must have a contiguous last dimension");
}

void raise_if(const char* err) { TORCH_CHECK(err == nullptr || err[0] == '\0', err); }

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                bool causal, int64_t version, int64_t config) {
    check_qkv_like(q, "query");
    check_qkv_like(k, "key");
    check_qkv_like(v, "value");
    const c10::cuda::CUDAGuard guard(q.device());
    const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), d = q.size(3), Nk = k.size(2);
    at::Tensor o = at::empty({B, H, Nq, d}, q.options());                    // (B, H, Nq, d)
    at::Tensor lse = at::empty({B, H, Nq}, q.options().dtype(at::kFloat));  // (B, H, Nq)

    flash::FwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.o = o.data_ptr();
    p.lse = lse.data_ptr<float>();
    p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
    p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
    p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
    p.o_batch_stride = o.stride(0), p.o_head_stride = o.stride(1), p.o_row_stride = o.stride(2);
    p.B = static_cast<int>(B), p.H = static_cast<int>(H), p.Nq = static_cast<int>(Nq), p.Nk = static_cast<int>(Nk);
    p.d = static_cast<int>(d);
    p.scale = static_cast<float>(scale);
    p.causal = causal;
    p.dtype = dtype_of(q);
    p.stream = c10::cuda::getCurrentCUDAStream().stream();

    const char* err = nullptr;
    switch (version) {
        case 1: err = flash::forward_v1(p); break;
        case 2: err = flash::forward_v2(p); break;
        case 3: err = config >= 0 ? flash::forward_v3_config(p, static_cast<int>(config)) : flash::forward_v3(p); break;
        default: TORCH_CHECK(false, "no cuda forward version ", version);
    }
    raise_if(err);
    return {o, lse};
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                 const at::Tensor& lse, const at::Tensor& dout, double scale, bool causal,
                                 int64_t version) {
    check_qkv_like(q, "query");
    check_qkv_like(k, "key");
    check_qkv_like(v, "value");
    check_qkv_like(o, "out");
    check_qkv_like(dout, "grad_out");
    TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == at::kFloat, "lse must be a contiguous float32 (B, H, Nq)");
    const c10::cuda::CUDAGuard guard(q.device());
    const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), d = q.size(3), Nk = k.size(2);
    at::Tensor dq = at::empty({B, H, Nq, d}, q.options());                     // (B, H, Nq, d)
    at::Tensor dk = at::empty({B, H, Nk, d}, q.options());                     // (B, H, Nk, d)
    at::Tensor dv = at::empty({B, H, Nk, d}, q.options());                     // (B, H, Nk, d)
    at::Tensor delta = at::empty({B, H, Nq}, q.options().dtype(at::kFloat));  // D, (B, H, Nq)

    flash::BwdParams p{};
    p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.o = o.data_ptr(), p.dout = dout.data_ptr();
    p.lse = lse.data_ptr<float>();
    p.delta = delta.data_ptr<float>();
    p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
    p.dq_accum = nullptr;
    p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
    p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
    p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
    p.o_batch_stride = o.stride(0), p.o_head_stride = o.stride(1), p.o_row_stride = o.stride(2);
    p.do_batch_stride = dout.stride(0), p.do_head_stride = dout.stride(1), p.do_row_stride = dout.stride(2);
    p.B = static_cast<int>(B), p.H = static_cast<int>(H), p.Nq = static_cast<int>(Nq), p.Nk = static_cast<int>(Nk);
    p.d = static_cast<int>(d);
    p.scale = static_cast<float>(scale);
    p.causal = causal;
    p.dtype = dtype_of(q);
    p.stream = c10::cuda::getCurrentCUDAStream().stream();

    const char* err = nullptr;
    switch (version) {
        case 1: err = flash::backward_v1(p); break;
        case 2: err = flash::backward_v2(p); break;
        default: TORCH_CHECK(false, "no cuda backward version ", version);
    }
    raise_if(err);
    return {dq, dk, dv, delta};
}

std::vector<std::string> v3_configs() {
    std::vector<std::string> names;
    for (int i = 0; i < flash::forward_v3_num_configs(); ++i) names.emplace_back(flash::forward_v3_config_name(i));
    return names;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "FlashAttention from first principles: the CUDA C++ kernels (see kernels/cuda/)";
    m.def("forward", &forward, "forward(q, k, v, scale, causal, version, config) -> [O, L]");
    m.def("backward", &backward, "backward(q, k, v, o, lse, dout, scale, causal, version) -> [dQ, dK, dV, D]");
    m.def("v3_configs", &v3_configs, "names of the tile configurations forward v3 can be run with");
}
