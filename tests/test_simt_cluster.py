"""Thread-block clusters in the SIMT emulator (csrc/simt/): cluster launches validated as
the hardware does, cluster_rank/cluster_size, cluster_sync and distributed shared memory
(cluster_map_shared), with known-good kernels that must be correct and bitwise equal under
every schedule and known-bad kernels that must be caught. On a GPU the good kernel also
runs on CUDA tensors and must match the emulator.
"""

from __future__ import annotations

import re

import pytest
import torch

import rnn_fused  # noqa: F401  (loads the extension)
from rnn_fused import simt
from rnn_fused.tools import simt_selftest as selftest

from simt_helpers import COORDS, KERNEL_SITE, LAUNCH_SITE, each_schedule, fresh_emulator, needs_cuda  # noqa: F401

def mix_reference(x: torch.Tensor, n: int, rounds: int) -> torch.Tensor:
    """The clusters' recurrence on the CPU: h'[j] = 0.5 h[j] + 0.25 (h[(j+1) mod n] + h[n-1-j])
    per vector of n elements (0.5 h is exact, so this rounds as the kernel's fmaf)."""
    h = x.view(-1, n).clone()
    for _ in range(rounds):
        h = 0.5 * h + 0.25 * (torch.roll(h, -1, dims=1) + torch.flip(h, dims=[1]))
    return h


def expected_ranks(blocks: int, cluster_size: int) -> torch.Tensor:
    rank = torch.arange(blocks, dtype=torch.int32) % cluster_size
    return torch.stack([rank, torch.full_like(rank, cluster_size)], dim=1)


# ---- known-good kernels -----------------------------------------------------------------

@pytest.mark.parametrize("static_buffers", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("cluster_size,block_threads,clusters", [(1, 64, 3), (2, 32, 3), (4, 48, 2), (8, 32, 2)])
def test_cluster_allgather_recurrence(cluster_size, block_threads, clusters, static_buffers):
    n = cluster_size * block_threads
    x = torch.randn(clusters * n, generator=torch.Generator().manual_seed(n + cluster_size))
    out, ranks = each_schedule(lambda: selftest.cluster_allgather(x, block_threads, cluster_size, rounds=6,
                                                                  static_buffers=static_buffers))
    # Every block of a cluster holds the whole final vector of its cluster.
    assert torch.equal(out, mix_reference(x, n, 6).repeat_interleave(cluster_size, dim=0))
    assert torch.equal(ranks, expected_ranks(clusters * cluster_size, cluster_size))


def test_cluster_of_16_blocks_with_the_non_portable_opt_in():
    x = torch.randn(2 * 16 * 32, generator=torch.Generator().manual_seed(16))
    out, ranks = each_schedule(lambda: selftest.cluster_allgather(x, 32, 16, rounds=4, static_buffers=True,
                                                                  nonportable=True))
    assert torch.equal(out, mix_reference(x, 512, 4).repeat_interleave(16, dim=0))
    assert torch.equal(ranks, expected_ranks(32, 16))


def test_launch_without_clusters_is_a_grid_of_one_block_clusters():
    x = torch.randn(3 * 64)
    out, ranks = each_schedule(lambda: selftest.cluster_allgather(x, 64, 0, rounds=5))
    assert torch.equal(out, mix_reference(x, 64, 5))
    assert torch.equal(ranks, expected_ranks(3, 1))


# ---- known-bad kernels ------------------------------------------------------------------

def run_fault(fault, cluster_size=2, block_threads=16, clusters=2, rounds=0):
    x = torch.randn(clusters * cluster_size * block_threads)
    return selftest.faulty_cluster(fault, x, block_threads, cluster_size, rounds)


def assert_cluster_fault(fault, pattern, **kwargs):
    with pytest.raises(RuntimeError) as info:
        run_fault(fault, **kwargs)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert re.search(COORDS, message), message
    assert re.search(KERNEL_SITE, message), message
    assert re.search(LAUNCH_SITE + r" with grid \(\d+,1,1\), block \(\d+,1,1\), cluster size \d+", message), message
    return message


RACE_CLUSTER, RACE_THREADS, RACE_ROUNDS = 4, 16, 3


def race_results(fault):
    """A racy all-gather (known-bad `fault`) on x = 1, 2, ... under every schedule: the results
    by (mode, seed), and the correct result."""
    x = torch.arange(2 * RACE_CLUSTER * RACE_THREADS, dtype=torch.float32) + 1
    results = {}
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            results[mode, seed] = selftest.faulty_cluster(fault, x, RACE_THREADS, RACE_CLUSTER, RACE_ROUNDS)
    correct = mix_reference(x, RACE_CLUSTER * RACE_THREADS, RACE_ROUNDS).repeat_interleave(RACE_CLUSTER, dim=0)
    # Zeroed copies: stale reads give finite values.
    assert all(torch.isfinite(r).all() for r in results.values())
    return results, correct


def test_missing_cluster_sync_differs_across_schedules():
    # Blocks exchange their slices through distributed shared memory but wait only at
    # __syncthreads: a block runs ahead and reads slices the others have not written yet.
    results, correct = race_results("missing_cluster_sync")
    forward = results["forward", 0]
    for key, other in results.items():
        if key != ("forward", 0):
            assert not torch.equal(other, forward), f"schedule {key} gives the forward result: race not exposed"
    assert all(not torch.equal(r, correct) for r in results.values())
    # The same exchange with the barrier (cluster_sync, and in halves) is right under every schedule.
    x = torch.arange(2 * RACE_CLUSTER * RACE_THREADS, dtype=torch.float32) + 1
    good, _ = each_schedule(lambda: selftest.cluster_allgather(x, RACE_THREADS, RACE_CLUSTER, RACE_ROUNDS))
    assert torch.equal(good, correct)


def test_reads_between_cluster_arrive_and_wait_differ_across_schedules():
    # The barrier in halves (the known-good kernel's odd rounds) with each round's reads of the
    # gathered copy moved between the arrival and the wait: a block reads slices that others
    # have not written yet, and which ones depends on the schedule.
    results, correct = race_results("read_before_cluster_wait")
    assert any(not torch.equal(r, correct) for r in results.values()), "no schedule exposed the race"
    assert len({tuple(r.flatten().tolist()) for r in results.values()}) > 1, "every schedule gives one result"


@pytest.mark.parametrize("fault,pattern", [
    ("wait_without_arrive", r"simt::cluster_wait at .*: this thread has not arrived at the cluster barrier "
                            r"\(simt::cluster_arrive\) since it last passed one"),
    ("arrive_twice", r"simt::cluster_arrive at .*: this thread arrived at the cluster barrier at .* and has not "
                     r"waited since: simt::cluster_wait before it arrives again"),
    ("map_between_arrive_and_wait", r"simt::cluster_map_shared at .*: called between simt::cluster_arrive \(.*\) "
                                    r"and simt::cluster_wait, where the cluster barrier orders no access to another "
                                    r"block's memory"),
    ("exit_after_arrive", r"cluster barrier divergence: block \((1|3),0,0\) thread \(\d+,0,0\) exited after "
                          r"simt::cluster_arrive at .* without its simt::cluster_wait"),
])
@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_misused_split_cluster_barrier_is_an_error(fault, pattern, mode, seed):
    with simt.schedule(mode, seed):
        with pytest.raises(RuntimeError) as info:
            run_fault(fault)
    assert re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_divergent_cluster_sync_is_an_error(mode, seed):
    with simt.schedule(mode, seed):
        message = assert_cluster_fault("divergent_cluster_sync", r"cluster barrier divergence: .*waits at "
                                       r"simt::cluster_sync .*, but .*waits at simt::cluster_sync")
    assert len(set(re.findall(KERNEL_SITE, message))) == 2, message  # both call sites are named


def test_rank_out_of_range_is_an_error():
    assert_cluster_fault("rank_out_of_range", r"simt::cluster_map_shared at .*: rank 4 is out of range: the cluster "
                         r"has 4 blocks \(ranks 0\.\.3\)", cluster_size=4)


def test_mapping_a_global_pointer_is_an_error():
    assert_cluster_fault("map_non_shared", r"simt::cluster_map_shared at .*: pointer 0x[0-9a-f]+ does not point into "
                         r"this block's shared memory")


def test_block_exiting_while_another_may_access_its_shared_memory_is_an_error():
    # Forward: rank 0 writes into rank 1 after the last cluster_sync, then rank 1 exits.
    message = assert_cluster_fault(
        "exit_while_mapped",
        r"block \(1,0,0\) \(cluster rank 1\) exited \(its last thread, block \(1,0,0\) thread \(\d+,0,0\), returned\) "
        r"while block \(0,0,0\) may still access its shared memory \(block \(0,0,0\) thread \(\d+,0,0\) mapped it "
        r"with simt::cluster_map_shared at .*after the last cluster_sync\): cluster_sync before exit")
    assert re.search(KERNEL_SITE, message)
    # Other orders let rank 1 exit first; rank 0's mapping is then the error. Either way the
    # bug is caught under every schedule.
    for mode, seed in simt.ALL_SCHEDULES[1:]:
        with simt.schedule(mode, seed):
            assert_cluster_fault("exit_while_mapped", r"exited .*cluster_sync before exit|simt::cluster_map_shared at "
                                 r".*: block \(\d+,0,0\) \(cluster rank 1\) has exited: its shared memory is gone")


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_exit_before_cluster_sync_is_an_error(mode, seed):
    with simt.schedule(mode, seed):
        assert_cluster_fault("exit_before_cluster_sync", r"cluster barrier divergence: .*waits at simt::cluster_sync "
                             r".*, but block \((1|3),0,0\) thread \(\d+,0,0\) has exited")


def test_cluster_sync_against_block_barrier_is_a_deadlock():
    assert_cluster_fault("cluster_sync_against_barrier", r"deadlock: block \(0,0,0\) thread \(0,0,0\) waits at "
                         r"simt::cluster_sync .*, but block \(0,0,0\) thread \(1,0,0\) waits at __syncthreads")


def test_grid_sync_in_a_cluster_launch_is_an_error():
    assert_cluster_fault("grid_sync_in_cluster", r"simt::grid_sync at .*not launched with simt::launch_cooperative")


def test_cluster_primitives_on_a_device_without_clusters_are_an_error():
    with simt.emulated_device(compute_capability=(8, 0)):
        with pytest.raises(RuntimeError, match=r"simt::cluster_(size|rank) at .*" + KERNEL_SITE +
                           r": thread-block clusters need compute capability 9.0; the emulated device has 8.0"):
            selftest.cluster_allgather(torch.randn(64), 32, 0, rounds=1)


def test_emulator_recovers_after_a_cluster_error():
    with pytest.raises(RuntimeError):
        run_fault("exit_while_mapped")
    x = torch.randn(4 * 32)
    out, _ = selftest.cluster_allgather(x, 32, 4, rounds=2)
    assert torch.equal(out, mix_reference(x, 128, 2).repeat_interleave(4, dim=0))


# ---- the exchange by asynchronous stores (simt::store_async, mbarriers) -------------------

@pytest.mark.parametrize("cluster_size,block_threads,clusters", [(2, 32, 3), (4, 48, 2), (16, 32, 2)])
def test_cluster_allgather_by_asynchronous_stores(cluster_size, block_threads, clusters):
    # No cluster barrier per round: each block waits on its own mbarrier for the bytes the
    # others (and itself) store into its copy; right and bitwise alike under every schedule.
    n = cluster_size * block_threads
    x = torch.randn(clusters * n, generator=torch.Generator().manual_seed(n))
    out, ranks = each_schedule(lambda: selftest.cluster_allgather(x, block_threads, cluster_size, rounds=7,
                                                                  nonportable=cluster_size > 8, async_exchange=True))
    assert torch.equal(out, mix_reference(x, n, 7).repeat_interleave(cluster_size, dim=0))
    assert torch.equal(ranks, expected_ranks(clusters * cluster_size, cluster_size))


@pytest.mark.parametrize("fault", ["async_read_before_wait", "async_one_copy"])
def test_misordered_asynchronous_exchange_differs_across_schedules(fault):
    # The emulator performs an asynchronous store at the latest a GPU may (the forward schedule:
    # when the phase that counts it completes), at the earliest (reverse: at once) or either
    # (shuffled). A round that reads its copy before the wait reads the round before's under
    # the first; with one copy for every round, a block's next stores land in a copy another
    # block still reads under the second.
    results, correct = race_results(fault)
    assert any(not torch.equal(r, correct) for r in results.values()), "no schedule exposed the race"
    assert len({tuple(r.flatten().tolist()) for r in results.values()}) > 1, "every schedule gives one result"


@pytest.mark.parametrize("fault,pattern", [
    ("async_expect_too_many_bytes",
     r"deadlock: block \(\d+,0,0\) thread \(\d+,0,0\) waits at simt::mbarrier_wait \(.*\) for the phase of parity "
     r"0 of the mbarrier at \S+ \(initialised at .*; 0 of 1 arrivals and 4 bytes still expected\); no thread that "
     r"can still run arrives on it or stores to it"),
    # Without the cluster_sync a block stores into one whose init has not run or is not published.
    ("async_store_before_init_visible",
     r"simt::store_async at .*: the mbarrier at \S+ (was not initialised \(simt::mbarrier_init\)|\(block "
     r"\(\d+,0,0\)\) was initialised at .* and no cluster_sync has made it visible to this block since)"),
    ("async_uninitialised_barrier",
     r"simt::(store_async|mbarrier_arrive_expect_tx) at .*: the mbarrier at \S+ was not initialised "
     r"\(simt::mbarrier_init\)"),
    ("async_exit_with_stores_pending",
     r"block \((1|3),0,0\) \(cluster rank 1\) exited \(its last thread, .*, returned\) with a phase of its "
     r"mbarrier at \S+ \(initialised at .*\) in progress: 1 of 1 arrivals and -\d+ bytes still expected: "
     r"asynchronous stores or arrivals it never waited for|simt::store_async at .*: block \((1|3),0,0\) \(cluster "
     r"rank 1\) has exited: its shared memory is gone"),
])
@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_misused_mbarrier_exchange_is_an_error(fault, pattern, mode, seed):
    with simt.schedule(mode, seed):
        assert_cluster_fault(fault, pattern, rounds=2)


# ---- launch validation, occupancy, device ------------------------------------------------

def launch_error(pattern):
    return pytest.raises(RuntimeError, match=r"invalid cluster launch at .*" + LAUNCH_SITE + r" .*cluster size \d+\): "
                         + pattern)


def test_grid_must_be_a_multiple_of_the_cluster_size():
    with launch_error(r"grid.x = 6 is not a multiple of the cluster size 4"):
        selftest.cluster_allgather(torch.randn(6 * 32), 32, 4, rounds=1)


def test_cluster_size_limits():
    x9 = torch.randn(9 * 32)
    with launch_error(r"cluster size 9 exceeds the portable limit 8 and the kernel did not opt in"):
        selftest.cluster_allgather(x9, 32, 9, rounds=1)
    out, ranks = selftest.cluster_allgather(x9, 32, 9, rounds=2, nonportable=True)
    assert torch.equal(out, mix_reference(x9, 9 * 32, 2).repeat_interleave(9, dim=0))
    with launch_error(r"cluster size 9 exceeds the portable limit 8"):  # the opt-in can be revoked
        selftest.cluster_allgather(x9, 32, 9, rounds=1, nonportable=False)
    with launch_error(r"cluster size 17 is outside \[1, 16\]"):
        selftest.cluster_allgather(torch.randn(17 * 16), 16, 17, rounds=1, nonportable=True)


def test_cluster_launch_needs_compute_capability_9():
    with simt.emulated_device(compute_capability=(8, 0)):
        with launch_error(r"cluster launch is not supported on this device \(compute capability 8.0; "
                          r"thread-block clusters need 9.0 or newer\)"):
            selftest.cluster_allgather(torch.randn(4 * 32), 32, 2, rounds=1)
        assert selftest.cluster_occupancy(32, 0, 2) == 0
    with simt.emulated_device(compute_capability=(10, 0)):
        out, _ = selftest.cluster_allgather(torch.ones(4 * 32), 32, 2, rounds=1)
        assert torch.equal(out, torch.ones(4, 64))


def test_a_whole_cluster_must_be_co_resident():
    x = torch.randn(4 * 256)
    # One SM holding 2 blocks of 256 threads: a cluster of 4 can never be resident at once.
    with simt.emulated_device(sm_count=1, max_threads_per_sm=512):
        assert selftest.cluster_occupancy(256, 2 * 4 * 4 * 256, 4) == 0
        with launch_error(r"not even one cluster of 4 blocks can be co-resident"):
            selftest.cluster_allgather(x, 256, 4, rounds=1)
        out, _ = selftest.cluster_allgather(x, 256, 2, rounds=1)  # a cluster of 2 fits
        assert torch.equal(out, mix_reference(x, 512, 1).repeat_interleave(2, dim=0))
    with simt.emulated_device(sm_count=2, max_threads_per_sm=512):
        assert selftest.cluster_occupancy(256, 2 * 4 * 4 * 256, 4) == 1
        out, _ = selftest.cluster_allgather(x, 256, 4, rounds=1)
        assert torch.equal(out, mix_reference(x, 1024, 1).repeat_interleave(4, dim=0))


def test_max_active_clusters_model():
    # Per GPC, blocks per SM x its SMs / cluster size: the default device's 132 SMs are 7 GPCs of
    # 18 and one of 6.
    smem = 2 * 4 * 8 * 128
    per_sm = selftest.occupancy("cluster_allgather", 128, smem)
    assert per_sm == 16  # 2048 threads per SM / 128
    assert simt.device_properties().sms_per_gpc == 18
    assert selftest.cluster_occupancy(128, smem, 8) == 7 * (16 * 18 // 8) + 16 * 6 // 8
    assert selftest.cluster_occupancy(128, smem, 3) == 7 * (16 * 18 // 3) + 16 * 6 // 3
    assert selftest.cluster_occupancy(128, smem, 16) == 0  # non-portable size without the opt-in
    assert selftest.cluster_occupancy(128, smem, 16, nonportable=True) == 7 * (16 * 18 // 16) + 16 * 6 // 16
    assert selftest.cluster_occupancy(128, smem, 17, nonportable=True) == 0
    assert selftest.cluster_occupancy(2048, smem, 2) == 0  # above the launch bounds: no block fits
    with simt.emulated_device(max_blocks_per_sm=1):
        # A cluster cannot span GPCs: 7 of 16 or of 12 blocks (132 SMs without GPCs would hold 8
        # and 11), and the last GPC's 6 SMs take clusters of up to 6.
        assert selftest.cluster_occupancy(128, smem, 16, nonportable=True) == 7
        assert selftest.cluster_occupancy(128, smem, 12, nonportable=True) == 7
        assert selftest.cluster_occupancy(128, smem, 6) == 7 * 3 + 1
        assert selftest.cluster_occupancy(128, smem, 7) == 7 * 2
        with simt.emulated_device(sms_per_gpc=0):  # no GPCs: the device's SMs / cluster size
            assert selftest.cluster_occupancy(128, smem, 16, nonportable=True) == 132 // 16
            assert selftest.cluster_occupancy(128, smem, 12, nonportable=True) == 132 // 12
        with simt.emulated_device(sms_per_gpc=200):  # a GPC larger than the device: one GPC
            assert selftest.cluster_occupancy(128, smem, 12, nonportable=True) == 132 // 12
    with simt.emulated_device(sm_count=3, max_blocks_per_sm=1):
        assert selftest.cluster_occupancy(128, smem, 2) == 1
        assert selftest.cluster_occupancy(128, smem, 4) == 0
    with pytest.raises(RuntimeError, match=r"sms_per_gpc must be >= 0"):
        simt.set_device_properties(simt.DeviceProperties(sms_per_gpc=-1))


# The cluster path's launch shapes the H200 ran (make gpu-check's autotuning, both runs of
# 2026-12-04): CTAs per cluster, CTAs per SM, sample groups and the waves the GPU's own occupancy
# query gave them (tests/data; test_gpu_check.py holds the file to the runs' JSON). (3, 2)
# over-counts there: 88 clusters by the model, at most 85 on the GPU.
H200_CLUSTER_WAVES = "h200_cluster_waves_2026-12-04.json"
MODEL_OVERCOUNTS = {(3, 2)}


def _h200_cluster_launches() -> set[tuple[int, int, int, int]]:
    import json
    import os

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", H200_CLUSTER_WAVES)) as f:
        return {tuple(launch) for launch in json.load(f)["launches"]}


def test_cluster_occupancy_model_gives_the_h200s_waves():
    """The default emulated device's cluster occupancy puts each launch shape the H200 ran in as
    many waves as the GPU did, but where MODEL_OVERCOUNTS says (checked to be still wrong there)."""
    launches = _h200_cluster_launches()
    assert len(launches) >= 40 and any(size == 16 for size, *_ in launches)
    smem = 2 * 4 * 8 * 128  # a small CTA: its CTAs per SM are max_blocks_per_sm's
    wrong = set()
    for size, per_sm, groups, waves in sorted(launches):
        with simt.emulated_device(max_blocks_per_sm=per_sm):
            clusters = selftest.cluster_occupancy(128, smem, size, nonportable=size > 8)
        if -(-groups // clusters) != waves:
            wrong.add((size, per_sm))
    assert wrong == MODEL_OVERCOUNTS


def test_emulated_device_compute_capability_round_trip():
    default = simt.device_properties()
    assert default.compute_capability == (9, 0) == simt.DeviceProperties().compute_capability
    with simt.emulated_device(compute_capability=(8, 0)) as props:
        assert props.compute_capability == (8, 0)
        assert simt.device_properties() == props
        assert (props.compute_capability_major, props.compute_capability_minor) == (8, 0)
        assert props.sm_count == default.sm_count
        with simt.emulated_device(compute_capability_minor=6):
            assert simt.device_properties().compute_capability == (8, 6)
        assert simt.device_properties().compute_capability == (8, 0)
    assert simt.device_properties() == default
    with pytest.raises(TypeError, match="not both"):
        with simt.emulated_device(compute_capability=(8, 0), compute_capability_major=8):
            pass
    with pytest.raises(TypeError, match=r"\(major, minor\) tuple of ints"):
        with simt.emulated_device(compute_capability=9):
            pass
    with pytest.raises(RuntimeError, match=r"compute capability must be major >= 1, minor in \[0, 9\]"):
        simt.set_device_properties(simt.DeviceProperties(compute_capability_minor=10))
    assert simt.device_properties() == default


def test_device_property_fields_agree_with_the_extension():
    from dataclasses import fields

    names = [f.name for f in fields(simt.DeviceProperties)]
    assert list(torch.ops.rnn_fused_simt.device_property_names()) == names
    assert len(torch.ops.rnn_fused_simt.get_device_properties()) == len(names)
    with pytest.raises(RuntimeError, match=rf"expected {len(names)} values \(sm_count, .*compute_capability_minor\)"):
        torch.ops.rnn_fused_simt.set_device_properties([1, 2, 3])
    with pytest.raises(RuntimeError, match="cooperative_launch must be 0 or 1, got 2"):
        values = list(torch.ops.rnn_fused_simt.get_device_properties())
        values[names.index("cooperative_launch")] = 2
        torch.ops.rnn_fused_simt.set_device_properties(values)


# ---- the same kernel on a real GPU --------------------------------------------------------

def exchange_reference(x: torch.Tensor, block_threads: int, cluster_size: int) -> torch.Tensor:
    """Each block gets the slice of the next rank of its cluster."""
    slices = x.view(-1, cluster_size, block_threads)
    return torch.roll(slices, -1, dims=1).reshape(-1)


@pytest.mark.parametrize("cluster_size", [2, 4])
def test_cluster_exchange_through_global_memory(cluster_size):
    """Blocks of a cluster hand values to each other through global memory behind one
    cluster_sync, which orders global memory as well as distributed shared memory."""
    x = torch.randn(3 * cluster_size * 16)
    got = each_schedule(lambda: selftest.cluster_exchange(x, 16, cluster_size))
    assert torch.equal(got, exchange_reference(x, 16, cluster_size))


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_global_exchange_across_clusters_is_unordered(mode, seed):
    """A cluster's barrier orders nothing for the blocks of another cluster (nor are they
    co-resident): reading the next cluster's values through global memory is unordered."""
    with simt.schedule(mode, seed):
        with pytest.raises(RuntimeError) as info:
            run_fault("global_exchange_across_clusters", cluster_size=2)
    message = str(info.value)
    assert re.search(r"simt::(load|store)_cross_block at .*selftest_kernels\.cuh:\d+: (reads|writes) the word at "
                     r"0x[0-9a-f]+, which block \(\d,0,0\) thread \(\d+,0,0\) (wrote|read) with "
                     r"simt::(store|load)_cross_block at .*, and nothing orders that access before this one: the "
                     r"blocks of a plain launch \(or of different clusters\) are not co-resident", message), message


@needs_cuda
@pytest.mark.cuda
def test_cluster_allgather_on_cuda_matches_the_emulator():
    x = torch.randn(4 * 8 * 32)
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        with pytest.raises(RuntimeError, match="cluster launch is not supported on this device"):
            selftest.cluster_allgather(x.cuda(), 32, 8, rounds=3)
        return
    assert torch.equal(selftest.cluster_exchange(x.cuda(), 32, 8).cpu(), exchange_reference(x, 32, 8))
    for cluster_size, nonportable in ((8, False), (16, True)):
        for static_buffers, async_exchange in ((False, False), (True, False), (False, True), (True, True)):
            want = selftest.cluster_allgather(x, 32, cluster_size, 3, static_buffers, nonportable, async_exchange)
            got = selftest.cluster_allgather(x.cuda(), 32, cluster_size, 3, static_buffers, nonportable, async_exchange)
            assert torch.equal(got[0].cpu(), want[0])
            assert torch.equal(got[1].cpu(), want[1])
