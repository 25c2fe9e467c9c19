"""A BN training step phase by phase from Python (threads.run_phases): each phase's per-shard tasks,
and between phases the sums through the comm, the statistics, the fused kernels' coefficients and
the head. Not the plan (shards.Plan) nor the layers (passes.py).
"""

# A BN training step phase by phase from Python (threads.run_phases): the per-shard tasks of each
# phase, and between phases the sums over all shards through the comm, the statistics and the
# fused kernels' coefficients, and the head. shards.run_step runs it with MPI ranks (the sums are
# collectives on the calling thread) and in one process while a pre-compile worker still builds
# kernels/bnstep.py's one-call step, which runs the same kernels and trees (the same bits).
#
# Shapes: as shards.py's; D statistics of a BN layer (units or channels).

from __future__ import annotations

from . import passes
from .kernels import batchnorm as norm
from .kernels import bncoef, bnstats, bntree, head
from .kernels.reduce import tree_sum_into


def statistics(net, plan, k, comm):
    """BN layer k's statistics from the shards' [sum | M2] rows in plan.fwd[k]: their tree (sums
    added, M2 combined: bntree.bn_moments_tree_into) -> mean, biased var -> invstd; the running
    statistics updated (PyTorch's rule, the unbiased variance) when the network keeps them."""
    M = plan.count[k]

    def tree(parts, out):
        bntree.bn_moments_tree_into(parts, plan.shard_counts[k], out)
        return out
    moments = comm.sum_shards(plan.fwd[k], plan.S, tree=tree)    # (2D,) the batch's [sum | M2]
    m = net.momentum
    if net.buffers is not None:
        rm, rv = net.buffers[f"bn{k}.running_mean"].reshape(-1), net.buffers[f"bn{k}.running_var"].reshape(-1)
    else:
        rm = rv = plan.no_running
    unbias = m * M / (M - 1) if M > 1 else 0.0     # (train_step refuses BN batches of one image)
    bnstats.bn_stats_into(moments, float(M), float(net.eps), plan.stats[k], rm.dtype.type(1 - m), m, unbias, rm, rv)


def gamma_beta(net, k):
    """BN layer k's gamma and beta as flat views."""
    return net.params[f"bn{k}.gamma"].reshape(-1), net.params[f"bn{k}.beta"].reshape(-1)


def fc_bn_backward(net, plan, j):
    """Shard j's dz3 of fc1's BN from the batch's sums of dy and dy*xhat (plan.bn_grads[3]) and invstd."""
    ws = plan.ws[j]
    sdy, sdyx = plan.bn_grads[3]
    norm.bn_unit_backward_given_into(ws.dy3, ws.xhat3, gamma_beta(net, 3)[0], plan.stats[3][2],
                                     sdy, sdyx, float(plan.count[3]), ws.dz3)


def forward_phases(net, plan, comm, inputs, targets, scale, backward, then=None):
    """Up to the loss, as [(task, after)] phases (threads.run_phases): per shard the layers up to a
    BN's input (from the BN below, fused with its pool + ELU) and its partial sums; after each
    phase the sums over all shards (comm), the statistics (and, for the conv layers, the fused
    kernels' coefficients); after BN3's, the head, then then()."""
    P = net.params
    phases = []
    for k in (1, 2, 3):
        def shard(j, k=k):
            ws = plan.ws[j]
            if k == 1:
                passes.forward_bn1_input(P, ws, inputs(j, ws), plan.fwd[1][j])
            elif k == 2:
                passes.forward_bn2_input(P, ws, plan.coef[1], plan.fwd[2][j])
            else:
                passes.forward_fc1(P, ws, plan.coef[2])
                bnstats.bn_unit_moments_into(ws.z3, plan.fwd[3][j])
        shard.__name__ = f"forward to BN{k}'s input, its moments"     # (kernel_profile's phase names)

        def after(k=k):
            statistics(net, plan, k, comm)
            if k < 3:
                mean, _, invstd = plan.stats[k]
                bncoef.bn_coef_forward_into(mean, invstd, *gamma_beta(net, k), plan.coef[k])
            else:
                head_step(net, plan, comm, targets, scale, backward)
                if then is not None:
                    then()
        phases.append((shard, after))
    return phases


def head_step(net, plan, comm, targets, scale, backward):
    """fc1's BN, ELU, fc2, the loss (and the backward down to BN3's sums), one fused call per shard
    (kernels/head.py) on one thread: these tasks are too short to gain from sharing them out."""
    P = net.params
    mean, _, invstd = plan.stats[3]
    gamma, beta = gamma_beta(net, 3)
    for j in range(len(plan.ws)):
        ws, G, (ls, wj) = plan.ws[j], plan.grads[j], targets(j)
        plan.loss[j, 0] = head.bn_head_into(
            ws.z3, mean, invstd, gamma, beta, P["fc2.w"], P["fc2.b"], ls, wj, scale, backward,
            ws.xhat3, ws.y3, ws.a3, ws.z4, ws.probs, ws.dz4, G["fc2.w"], G["fc2.b"], ws.da3, ws.dy3,
            plan.bwd[3][j])
        if backward:
            sums_done(plan, 3, comm)(j)


def sums_done(plan, k, comm):
    """done(j) for shard j's finished row of BN layer k's backward sums: in one process it goes into
    the rows' tree at once (RowTree: the same bits as tree_sum, no serial pass after the phase);
    with ranks the rows are summed through the comm after the phase."""
    if comm.size > 1:
        return lambda j: None
    return plan.bwdtree[k].done


def backward_phases(net, plan, comm, done):
    """From BN3's dy down: (sums3, [(task, after)] phases). Before each phase (sums3() after the
    head, then the previous phase's after) the sums of dy, dy*xhat over all shards (comm) and the
    BN's coefficients; per shard the BN's dz, the layers below it and the next BN's partial sums
    (fused with the unpooling); done(j) once shard j's row is complete."""
    P = net.params
    plan.bn_grads = {}

    def sums_of(k):
        if comm.size == 1:
            sums = plan.bwdtree[k].result()                                # (2D,) float64: sdy | sdyx
        else:
            sums = comm.sum_shards(plan.bwd[k], plan.S, tree=tree_sum_into)
        d = sums.shape[0] // 2
        plan.bn_grads[k] = (sums[:d], sums[d:])
        if k < 3:
            bncoef.bn_coef_backward_into(plan.stats[k][2], gamma_beta(net, k)[0], sums, float(plan.count[k]),
                                         plan.coef[k])

    phases = []
    for k in (3, 2, 1):
        below_done = sums_done(plan, k - 1, comm) if k > 1 else None

        def shard(j, k=k, below_done=below_done):
            ws, G = plan.ws[j], plan.grads[j]
            if k == 3:
                fc_bn_backward(net, plan, j)
                passes.backward_fc1(P, G, ws, (plan.coef[2], plan.bwd[2][j]))
                below_done(j)
            elif k == 2:
                passes.backward_bn2_to_bn1_sums(P, G, ws, plan.coef[2], plan.coef[1], plan.bwd[1][j])
                below_done(j)
            else:
                passes.backward_bn1(P, G, ws, plan.coef[1])
                done(j)
        shard.__name__ = f"backward from BN{k}" + (f" to BN{k - 1}'s sums" if k > 1 else "")
        phases.append((shard, (lambda k=k: sums_of(k - 1)) if k > 1 else None))
    return (lambda: sums_of(3)), phases
