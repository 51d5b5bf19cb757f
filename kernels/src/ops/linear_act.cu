// The in-place activation backward of the fused linear + activation (ops/linear_act.rs); compiled after
// activation.cu (linear_act.rs concatenates the two), whose act_grad it shares so the fused and unfused
// GPU paths compute the same bits. d, pre: [n].
extern "C" __global__ void act_backward_inplace_f32(float *d, const float *pre, size_t n, int act) {
    FOR_EACH(i, n) {
        const float g = d[i], x = pre[i];
        // relu passes the gradient through untouched (no multiply by 1), as activation_backward does.
        d[i] = act == 0 ? (x > 0.0f ? g : 0.0f) : g * act_grad(act, x);
    }
}
