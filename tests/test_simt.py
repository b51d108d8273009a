"""Tests of the SIMT emulator (csrc/simt/): the CUDA self-test kernels run on the CPU.

Known-good kernels must be correct and bitwise equal under every thread schedule;
known-bad kernels must be caught (an error naming block, thread, operation and
file:line, or results that differ across schedules). Launch validation, occupancy and
the emulated device are checked too. On a machine with a GPU the same kernels also run
on CUDA tensors and must match the emulator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch

import rnn_fused  # noqa: F401  (loads the extension)
from rnn_fused import simt
from rnn_fused.tools import simt_selftest as selftest

from simt_helpers import COORDS, KERNEL_SITE, LAUNCH_SITE, each_schedule, fresh_emulator, needs_cuda  # noqa: F401

def stencil_reference(x: torch.Tensor, steps: int) -> torch.Tensor:
    cur = x.clone()
    for _ in range(steps):
        left = torch.cat([cur.new_zeros(1), cur[:-1]])
        right = torch.cat([cur[1:], cur.new_zeros(1)])
        cur = 0.5 * cur + 0.25 * (left + right)  # 0.5*cur is exact, so this equals fmaf
    return cur


# ---- known-good kernels -----------------------------------------------------------------

@pytest.mark.parametrize("block_threads", [32, 96, 256, 1024])
def test_warp_reduce(block_threads):
    x = torch.randn(3 * block_threads, generator=torch.Generator().manual_seed(block_threads))
    sums = each_schedule(lambda: selftest.warp_reduce(x, block_threads))
    expected = x.double().view(3, block_threads).sum(1)
    torch_err = (x.view(3, block_threads).sum(1).double() - expected).abs().max().item()
    tol = max(2 * torch_err, 4 * block_threads * 2**-24 * x.abs().max().item())
    assert (sums.double() - expected).abs().max().item() <= tol


@pytest.mark.parametrize("shape", [(1, 1), (32, 32), (70, 45), (33, 100)])
def test_transpose(shape):
    x = torch.randn(*shape)
    out = each_schedule(lambda: selftest.transpose(x))
    assert torch.equal(out, x.t())


@pytest.mark.parametrize("sm_count", [2, 3, 4])
def test_grid_stencil_multi_block_grid_sync(sm_count):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(sm_count))
    # A small GPU: 2 blocks of 128 threads per SM, so the planner needs a grid-stride loop.
    with simt.emulated_device(sm_count=sm_count, max_threads_per_sm=256):
        out, plan = each_schedule(lambda: selftest.grid_stencil(x, steps=9, block_threads=128))
    assert plan.tolist() == [2 * sm_count, 2, sm_count]
    assert torch.equal(out, stencil_reference(x, 9))


@pytest.mark.parametrize("sm_count", [2, 3])
def test_flag_barrier_stencil_matches_the_grid_sync_one(sm_count):
    """simt::flag_barrier in place of grid_sync: every block waits for every other block's
    flag of the step, so the stencil is right under every schedule, with a grid-stride loop."""
    x = torch.randn(3000, generator=torch.Generator().manual_seed(sm_count))
    with simt.emulated_device(sm_count=sm_count, max_threads_per_sm=256):
        out, plan = each_schedule(lambda: selftest.flag_stencil(x, steps=9, block_threads=128))
    assert plan.tolist() == [2 * sm_count, 2, sm_count]
    assert torch.equal(out, stencil_reference(x, 9))


def test_flag_wait_nobody_publishes_is_a_deadlock():
    message = assert_fault("flag_never_published", r"deadlock: block \(\d,0,0\) thread \(0,0,0\) waits at "
                           r"simt::wait_flag \(.*\) for the flag at 0x[0-9a-f]+ to reach 1 \(it holds 0\)")
    assert "no thread that can still run publishes it" in message


def test_flag_wait_across_a_plain_launch_is_a_deadlock():
    """Blocks of a plain launch need not be co-resident: block 0 spinning on block 1's flag may
    never end on a GPU, and the emulator (running block 0 first) reports it."""
    message = assert_fault("flag_across_plain_launch", r"deadlock: block \(0,0,0\) thread \(0,0,0\) waits at "
                           r"simt::wait_flag .* to reach 1 \(it holds 0\)")
    assert "a plain launch runs its blocks one after another" in message


def test_waiting_for_an_overwritten_tag_is_an_error():
    """A tagged word that already carries a later tag than the one awaited was overwritten before
    it was read: the exchange's protocol is broken, and the wait says so instead of spinning."""
    assert_fault("tagged_word_overwritten", r"simt::wait_word_tag at .*waits for tag 1 of the word at 0x[0-9a-f]+, "
                 r"which was overwritten with tag 2 before it read it")


# Blocks hand values to the next block through simt::store_cross_block / load_cross_block,
# behind a flag per block that each case gets wrong in one way. The emulator's memory is
# sequentially consistent, so the values read are right; the launch fails because nothing
# orders a write before a read (or a read before a write) in CUDA's memory model. Which of the
# two accesses finds the gap depends on the schedule (a read before the write, or after it).
UNORDERED = (r"simt::(load|store)_cross_block at .*selftest_kernels\.cuh:\d+: (reads|writes) the word at "
             r"0x[0-9a-f]+, which block \(\d,0,0\) thread \((\d+),0,0\) (wrote|read) with "
             r"simt::(store|load)_cross_block at .*selftest_kernels\.cuh:\d+, and nothing orders that access "
             r"before this one: ")
BETWEEN_BLOCKS = "a grid or cluster barrier, or a release made after it"


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_release_before_the_block_barrier_is_unordered(mode, seed):
    """Thread 0 publishes its block's flag before the __syncthreads that would order the other
    threads' stores before it: a reader that acquired the flag is not ordered after them."""
    with simt.schedule(mode, seed):
        message = assert_fault("flag_before_block_barrier", UNORDERED + BETWEEN_BLOCKS, blocks=3, block_threads=8)
    assert re.search(UNORDERED, message).group(3) != "0", message  # thread 0's own store is ordered


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_acquire_without_the_block_barrier_is_unordered(mode, seed):
    """Thread 0 acquires the next block's flag, but the threads that read the next block's
    values have no __syncthreads after that acquire."""
    with simt.schedule(mode, seed):
        assert_fault("flag_wait_without_block_barrier", UNORDERED + BETWEEN_BLOCKS, blocks=3, block_threads=8)


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_overwrite_before_the_readers_are_done_is_unordered(mode, seed):
    """After a correct exchange each block overwrites its values, but the block before it has
    released nothing since reading them: a write-after-read race."""
    with simt.schedule(mode, seed):
        assert_fault("cross_block_overwrite", UNORDERED + BETWEEN_BLOCKS, blocks=3, block_threads=8)


def test_flag_relay_orders_through_the_chain():
    """Block 0's stores reach the last block only through a chain of flags (each block acquires
    the one before and then releases its own, storing nothing): the order composes."""
    x = torch.randn(4 * 8)
    out = each_schedule(lambda: selftest.flag_relay(x, 4))
    assert torch.equal(out, x[:4])


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_broken_flag_relay_is_unordered(mode, seed):
    """Each block publishes its flag before acquiring the previous one: the release carries
    nothing of block 0, so the last block's read of block 0's values is not ordered."""
    with simt.schedule(mode, seed):
        message = assert_fault("flag_relay_broken", UNORDERED + BETWEEN_BLOCKS, blocks=4, block_threads=8)
    assert "which block (0,0,0)" in message, message


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_wait_acquires_the_earliest_release_that_satisfies_it(mode, seed):
    """Block 0 stores a word, publishes 1, stores another, publishes 2; block 1 waits for 1 and
    reads the second word. Woken late it sees 2, but its load need not have: only the release
    of 1 is acquired, which the second store does not precede."""
    with simt.schedule(mode, seed):
        message = assert_fault("flag_later_release", UNORDERED + BETWEEN_BLOCKS, blocks=2, block_threads=8)
    assert "which block (0,0,0) thread (0,0,0) wrote" in message, message


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_write_under_a_copy_in_flight_is_unordered(mode, seed):
    """Block 0 issues an asynchronous copy of a word, hands the word over with a flag and waits
    for block 1's answer before it waits for the copy; block 1 overwrites the word before
    answering. The emulator performs the copy at its wait, after the write; a GPU may perform it
    any time between the issue and the wait: the write races the copy."""
    with simt.schedule(mode, seed):
        assert_fault("copy_overwritten_in_flight", r"simt::store_cross_block at .*selftest_kernels\.cuh:\d+: writes the "
                     r"word at 0x[0-9a-f]+, which block \(0,0,0\) thread \(0,0,0\) reads with simt::copy_async_16 "
                     r"issued at .*selftest_kernels\.cuh:\d+ and not yet waited for: the copy may read it at any time "
                     r"until its wait", blocks=2, block_threads=8)


def test_cross_block_exchange_in_a_plain_launch_is_unordered():
    assert_fault("cross_block_plain_launch", UNORDERED + r"the blocks of a plain launch \(or of different clusters\) "
                 r"are not co-resident", blocks=3, block_threads=8)


def test_grid_stencil_on_default_device_uses_one_block_per_needed_tile():
    x = torch.randn(1000)
    out, plan = selftest.grid_stencil(x, steps=4, block_threads=256)
    assert plan.tolist() == [4, 8, 132]
    assert torch.equal(out, stencil_reference(x, 4))


def test_atomics_global_and_shared():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 37, (1000,), generator=g, dtype=torch.int32)
    hist, maxima, total = each_schedule(lambda: selftest.atomics(values, bins=37, blocks=3, block_threads=64))
    assert torch.equal(hist, torch.bincount(values, minlength=37).int())
    assert maxima.tolist() == [values.max().item()] * 2
    assert total.item() == float(values.sum().item())  # integers < 2^24: exact in any order


def test_warp_scan_and_ballot():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-8, 9, (4 * 64,), generator=g).float()  # integer-valued: sums are exact
    scan, ballot = each_schedule(lambda: selftest.warp_scan(x, block_threads=64))
    assert torch.equal(scan, x.view(-1, 32).cumsum(1).view(-1))
    bits = ((x.view(-1, 32) > 0).long() << torch.arange(32)).sum(1)
    assert torch.equal(ballot.long() & 0xFFFFFFFF, bits)


def test_device_math_and_16_bit_conversions():
    x = torch.linspace(-6, 6, 301)
    y, half, bf16 = selftest.device_math(x)
    xd = x.double()
    expected = torch.tanh(xd) * torch.exp(-xd.abs()) + torch.rsqrt(1 + xd * xd)
    torch_err = ((torch.tanh(x) * torch.exp(-x.abs()) + torch.rsqrt(1 + x * x)).double() - expected).abs().max()
    assert (y.double() - expected).abs().max() <= max(2 * torch_err.item(), 4 * 2**-24)
    assert torch.equal(half, y.half().float())
    assert torch.equal(bf16, y.bfloat16().float())


def barrier_loop_reference(x: torch.Tensor, block_threads: int, rounds: int) -> torch.Tensor:
    v = x.view(-1, block_threads).clone()
    for _ in range(rounds):
        v = 0.5 * v + 0.25 * torch.roll(v, -1, dims=1)
    return v.view(-1)


def test_barrier_loop():
    x = torch.randn(3 * 96)
    out = each_schedule(lambda: selftest.barrier_loop(x, 96, 20))
    assert torch.equal(out, barrier_loop_reference(x, 96, 20))


# ---- known-bad kernels ------------------------------------------------------------------

def assert_fault(fault, pattern, blocks=2, block_threads=64, x=None):
    if x is None:
        x = torch.randn(blocks * block_threads)
    with pytest.raises(RuntimeError) as info:
        selftest.faulty(fault, x, blocks, block_threads)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert re.search(COORDS, message), message
    assert re.search(KERNEL_SITE, message), message
    assert re.search(LAUNCH_SITE, message), message
    return message


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_divergent_barrier_is_an_error(mode, seed):
    with simt.schedule(mode, seed):
        message = assert_fault("divergent_barrier", r"barrier divergence: .* waits at __syncthreads")
    sites = re.findall(KERNEL_SITE, message)
    assert len(set(sites)) == 2, message  # both call sites are named


def test_exit_before_barrier_is_an_error():
    assert_fault("exit_before_barrier", r"barrier divergence: .*waits at __syncthreads.*thread \(5,0,0\) has exited")


def test_missing_barrier_differs_across_schedules():
    x = torch.arange(64, dtype=torch.float32) + 1
    results = []
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            results.append(selftest.faulty("missing_barrier", x, 1, 64))
    distinct = {tuple(r.tolist()) for r in results}
    assert len(distinct) > 1, "the emulator did not expose the missing __syncthreads"
    # Forward order: every thread but the last reads a neighbour that has not written yet,
    # i.e. uninitialised shared memory, which the emulator fills with NaN.
    assert torch.isnan(results[0][:-1]).all()
    assert results[0][-1].item() == 1.0


def test_uninitialised_shared_memory_is_nan():
    # The reverse schedule runs thread 63 first: it reads cells[0] before thread 0 wrote it.
    with simt.schedule("reverse"):
        out = selftest.faulty("missing_barrier", torch.ones(64), 1, 64)
    assert torch.isnan(out[63])
    assert torch.equal(out[:63], torch.ones(63))


def test_shuffle_naming_inactive_lane_is_an_error():
    assert_fault("inactive_lane", r"__shfl_sync at .*mask 0xffffffff names inactive lane 16", block_threads=48)


def test_shuffle_mask_excluding_caller_is_an_error():
    assert_fault("mask_excludes_caller", r"__shfl_sync at .*mask 0xfffffffe excludes the calling lane 0")


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_shuffle_with_exited_lane_is_an_error(mode, seed):
    with simt.schedule(mode, seed):
        assert_fault("exited_lane", r"__shfl_xor_sync .*lane 3.*exited|lane 3.*has exited")


@pytest.mark.parametrize("mode,seed", simt.ALL_SCHEDULES)
def test_mismatched_warp_ops_are_an_error(mode, seed):
    with simt.schedule(mode, seed):
        assert_fault("mismatched_warp_ops", r"(__shfl_sync|__ballot_sync) at .*names lane \d+, which waits at "
                     r"(__ballot_sync|__shfl_sync) .*same op with the same mask")


def test_shuffle_reading_outside_its_mask_is_an_error():
    assert_fault("shuffle_outside_mask", r"__shfl_sync at .*lane 0 reads lane 20, which is not in mask 0x0000ffff")


def test_stack_overflow_names_the_thread():
    # The process cannot continue after a fiber overflows its stack: run it in a child.
    code = ("import torch\n"
            "from rnn_fused.tools import simt_selftest\n"
            "simt_selftest.faulty('stack_overflow', torch.ones(64), 2, 32)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    if os.environ.get("RNN_FUSED_SANITIZER_RUN") == "1":
        # The ASan build leaves SIGSEGV to ASan, which reports the overflow itself.
        assert "ERROR: AddressSanitizer" in proc.stderr, proc.stderr
        return
    assert re.search(r"simt: stack overflow \(128 KiB fiber stack\) in block \(\d+,0,0\) thread \(\d+,0,0\) "
                     r"of the kernel launched at .*" + LAUNCH_SITE, proc.stderr), proc.stderr


def test_warp_op_against_barrier_deadlock_is_an_error():
    assert_fault("warp_barrier_deadlock", r"deadlock: .*__syncthreads.*__syncwarp|deadlock: .*__syncwarp.*__syncthreads")


def test_grid_sync_without_cooperative_launch_is_an_error():
    assert_fault("grid_sync_not_cooperative", r"simt::grid_sync at .*not launched with simt::launch_cooperative")


def test_grid_sync_with_exited_block_is_an_error():
    assert_fault("grid_sync_block_exits", r"grid barrier divergence: .*simt::grid_sync.*block \(1,0,0\).*has exited")


def test_missing_grid_sync_differs_across_schedules():
    """Blocks of a cooperative grid exchange values through global memory behind only
    __syncthreads. The emulator runs one block at a time as far as its own barriers let it,
    so a block runs ahead where only a grid_sync would stop it: the result is wrong under
    every schedule and differs between them (lockstep blocks would have hidden the race)."""
    blocks, block_threads = 4, 32
    x = torch.arange(blocks * block_threads, dtype=torch.float32) + 1
    correct = x + x.roll(-block_threads)
    results = {}
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            results[mode, seed] = selftest.faulty("missing_grid_sync", x, blocks, block_threads)
    forward = results["forward", 0]
    for key, result in results.items():
        assert not torch.equal(result, correct), f"schedule {key} gives the right result: race not exposed"
        if key != ("forward", 0):
            assert not torch.equal(result, forward), f"schedule {key} gives the forward result"
    # The same exchange with grid_sync (the stencil) is right under every schedule.
    stencil, _ = each_schedule(lambda: selftest.grid_stencil(x, steps=3, block_threads=block_threads, blocks=blocks))
    assert torch.equal(stencil, stencil_reference(x, 3))


def test_exception_in_kernel_surfaces_with_coordinates():
    x = torch.ones(128)
    x[77] = -1.0
    with pytest.raises(RuntimeError) as info:
        selftest.faulty("kernel_check", x, 2, 64)
    message = str(info.value)
    assert re.search(r"SIMT_KERNEL_CHECK\(x\[i\] >= 0.0f\) failed at .*" + KERNEL_SITE, message), message
    assert "block (1,0,0) thread (13,0,0)" in message
    assert "input must be non-negative" in message


def test_emulator_recovers_after_an_error():
    with pytest.raises(RuntimeError):
        selftest.faulty("divergent_barrier", torch.ones(128), 2, 64)
    x = torch.randn(2 * 96)
    assert torch.equal(selftest.barrier_loop(x, 96, 3), barrier_loop_reference(x, 96, 3))


def test_launches_from_several_os_threads():
    # Each OS thread runs its own launches (fibers, stacks, current thread are per thread).
    from concurrent.futures import ThreadPoolExecutor

    inputs = [torch.randn(2 * 96, generator=torch.Generator().manual_seed(k)) for k in range(8)]

    def work(x):
        return selftest.barrier_loop(x, 96, 30), selftest.warp_reduce(x, 96)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, inputs))
    for x, (mixed, sums) in zip(inputs, results):
        assert torch.equal(mixed, barrier_loop_reference(x, 96, 30))
        assert torch.equal(sums, selftest.warp_reduce(x, 96))


# ---- launches, occupancy, device properties ---------------------------------------------

def test_cooperative_grid_too_large_is_an_error():
    x = torch.randn(4000)
    with simt.emulated_device(sm_count=2, max_threads_per_sm=256):
        out, plan = selftest.grid_stencil(x, 3, block_threads=128, blocks=4)  # exactly fits
        assert plan.tolist() == [4, 2, 2]
        assert torch.equal(out, stencil_reference(x, 3))
        with pytest.raises(RuntimeError, match=r"cooperative launch too large at .*" + LAUNCH_SITE +
                           r".*5 blocks but at most 4 \(2 per SM x 2 SMs\)"):
            selftest.grid_stencil(x, 3, block_threads=128, blocks=5)


def test_cooperative_launch_unsupported_is_an_error():
    with simt.emulated_device(cooperative_launch=False):
        with pytest.raises(RuntimeError, match="does not support cooperative launches"):
            selftest.grid_stencil(torch.randn(100), 2)


def test_launch_bounds_are_enforced():
    assert torch.equal(selftest.bounded(2, 128), torch.arange(128).float().repeat(2))
    with pytest.raises(RuntimeError, match=r"256 threads per block exceed the kernel's launch bounds 128"):
        selftest.bounded(1, 256)
    with pytest.raises(RuntimeError, match=r"exceed the kernel's launch bounds 128"):
        selftest.bounded(1, 16, 16)


def test_invalid_dimensions_are_rejected():
    with pytest.raises(RuntimeError, match="every block dimension must be at least 1"):
        selftest.bounded(1, 0)
    with pytest.raises(RuntimeError, match="every grid dimension must be at least 1"):
        selftest.bounded(0, 32)
    with simt.emulated_device(max_threads_per_block=64):
        with pytest.raises(RuntimeError, match="96 threads per block exceed the device limit 64"):
            selftest.bounded(1, 96)


def test_dynamic_shared_memory_limit():
    props = simt.device_properties()
    selftest.bounded(1, 32, dynamic_smem=props.shared_mem_per_block_optin)
    with pytest.raises(RuntimeError, match=r"shared memory exceeds the per-block limit 232448 bytes"):
        selftest.bounded(1, 32, dynamic_smem=props.shared_mem_per_block_optin + 1)
    with simt.emulated_device(shared_mem_per_block_optin=64 * 1024, shared_mem_per_sm=100 * 1024):
        with pytest.raises(RuntimeError, match="per-block limit 65536 bytes"):
            selftest.bounded(1, 32, dynamic_smem=64 * 1024 + 4)


def test_static_plus_dynamic_shared_memory_limit():
    # faulty_kernel has a 256-byte static array; its dynamic memory is 4 bytes per thread.
    with simt.emulated_device(shared_mem_per_block=300, shared_mem_per_block_optin=300):
        with pytest.raises(RuntimeError, match=r"shared memory exceeds the per-block limit 300 bytes"):
            selftest.faulty("missing_barrier", torch.ones(64), 1, 64)
        # 256 static + 32 dynamic fits.
        out = selftest.faulty("missing_barrier", torch.ones(8), 1, 8)
        assert out.shape == (8,)


def test_occupancy_model():
    # grid_stencil: 32 registers/thread, no shared memory.
    assert selftest.occupancy("grid_stencil", 128) == 16          # 2048 threads per SM
    assert selftest.occupancy("grid_stencil", 256) == 8
    assert selftest.occupancy("grid_stencil", 512) == 0           # above its launch bounds (256)
    with simt.emulated_device(max_blocks_per_sm=4):
        assert selftest.occupancy("grid_stencil", 32) == 4         # block slots
    # barrier_loop: shared memory limits it: 228 KB / (100 KB + 1 KB reserved) = 2.
    assert selftest.occupancy("barrier_loop", 128, 100 * 1024) == 2
    assert selftest.occupancy("barrier_loop", 128, 228 * 1024) == 0  # above the opt-in limit
    # warp_reduce: 24 registers/thread -> 768 per warp; 1024 threads = 32 warps.
    assert selftest.occupancy("warp_reduce", 1024) == 2
    with simt.emulated_device(regs_per_sm=32768, regs_per_block=32768):
        assert selftest.occupancy("warp_reduce", 1024) == 1
    with simt.emulated_device(regs_per_sm=16384, regs_per_block=16384):
        assert selftest.occupancy("warp_reduce", 1024) == 0       # 24576 registers > per block


def test_emulated_device_restores_and_validates():
    default = simt.device_properties()
    assert default == simt.DeviceProperties()
    with simt.emulated_device(sm_count=3, shared_mem_per_block_optin=100 * 1024) as props:
        assert simt.device_properties() == props
        assert props.sm_count == 3 and props.max_threads_per_sm == default.max_threads_per_sm
    assert simt.device_properties() == default
    with pytest.raises(RuntimeError, match="sm_count must be >= 1"):
        simt.set_device_properties(simt.DeviceProperties(sm_count=0))
    assert simt.device_properties() == default


def test_schedule_context_restores_and_validates():
    assert simt.get_schedule() == ("forward", 0)
    with simt.schedule("shuffle", 7):
        assert simt.get_schedule() == ("shuffle", 7)
    assert simt.get_schedule() == ("forward", 0)
    with pytest.raises(ValueError):
        with simt.schedule("sideways"):
            pass
    with pytest.raises(RuntimeError, match="mode must be"):
        torch.ops.rnn_fused_simt.set_schedule("sideways", 0)


def test_shuffle_schedule_is_reproducible_per_seed():
    x = torch.arange(64, dtype=torch.float32) + 1
    runs = {}
    for seed in (1, 1, 2, 3):
        with simt.schedule("shuffle", seed):
            runs.setdefault(seed, []).append(selftest.faulty("missing_barrier", x, 1, 64))
    a, b = runs[1]
    assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    others = [runs[2][0].nan_to_num(-1), runs[3][0].nan_to_num(-1)]
    assert any(not torch.equal(a.nan_to_num(-1), o) for o in others)


# ---- speed ----------------------------------------------------------------------------

def test_fiber_switch_is_well_under_a_microsecond():
    ns = min(simt.fiber_switch_ns(200_000) for _ in range(3))
    print(f"fiber switch: {ns:.1f} ns")
    assert ns < 1000


def test_launch_with_100_barriers_is_fast():
    x = torch.randn(4 * 128)
    selftest.barrier_loop(x, 128, 1)  # warm the stack pool
    start = time.perf_counter()
    out = selftest.barrier_loop(x, 128, 50)  # 4 blocks x 128 threads x 100 barriers
    elapsed = time.perf_counter() - start
    print(f"4 blocks x 128 threads x 100 barriers: {elapsed * 1e3:.1f} ms")
    assert torch.equal(out, barrier_loop_reference(x, 128, 50))
    assert elapsed < 1.0


# ---- the same kernels on a real GPU ------------------------------------------------------

@needs_cuda
@pytest.mark.cuda
def test_selftests_on_cuda_match_the_emulator():
    x = torch.randn(4 * 256)
    assert torch.allclose(selftest.warp_reduce(x.cuda(), 256).cpu(), selftest.warp_reduce(x, 256), rtol=1e-5, atol=1e-5)
    a = torch.randn(70, 45)
    assert torch.equal(selftest.transpose(a.cuda()).cpu(), a.t())
    out, plan = selftest.grid_stencil(x.cuda(), 5)
    assert torch.equal(out.cpu(), stencil_reference(x, 5)) and plan[0] >= 1
    out, plan = selftest.flag_stencil(x.cuda(), 5)
    assert torch.equal(out.cpu(), stencil_reference(x, 5)) and plan[0] >= 1
    assert torch.equal(selftest.flag_relay(x.cuda(), 4).cpu(), x[:128])
    values = torch.randint(0, 37, (1000,), dtype=torch.int32)
    hist, maxima, total = selftest.atomics(values.cuda(), 37)
    assert torch.equal(hist.cpu(), torch.bincount(values, minlength=37).int())
    xs = torch.randint(-8, 9, (256,)).float()
    scan, ballot = selftest.warp_scan(xs.cuda())
    assert torch.equal(scan.cpu(), selftest.warp_scan(xs)[0])
    assert torch.equal(ballot.cpu(), selftest.warp_scan(xs)[1])
    xm = torch.linspace(-6, 6, 301)
    for got, want in zip(selftest.device_math(xm.cuda()), selftest.device_math(xm)):
        assert torch.allclose(got.cpu(), want, rtol=1e-6, atol=1e-6)
    xb = torch.randn(4 * 128)
    assert torch.equal(selftest.barrier_loop(xb.cuda(), 128, 10).cpu(), barrier_loop_reference(xb, 128, 10))
    with pytest.raises(RuntimeError, match="launch bounds 128"):
        selftest.bounded(1, 256, device="cuda")


def test_async_copies_land_only_when_waited_for():
    """A read of shared memory that an asynchronous copy fills, before the wait, sees what was
    there before: the emulator performs a thread's copies at its wait (a GPU may be that late).
    The issuing thread reads first, so it always sees the old value; its neighbours read after
    the barrier, before or after its wait, depending on the schedule."""
    x = torch.arange(128, dtype=torch.float32)
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            out = selftest.faulty("async_copy_unwaited", x, 2, 64)
        assert torch.equal(out[::4], torch.full((32,), -1.0)), (mode, seed)
        assert ((out == x) | (out == -1)).all(), (mode, seed)


def test_async_copies_never_waited_for_are_an_error():
    assert_fault("async_copy_pending_at_exit", r"simt::copy_async_16 at .*exited with asynchronous copies it never "
                                               r"waited for \(1 committed group\(s\), 0 uncommitted\)")


def test_async_copy_outside_shared_memory_is_an_error():
    assert_fault("async_copy_outside_shared",
                 r"simt::copy_async_16 at .*the destination does not lie within this block's shared memory")
