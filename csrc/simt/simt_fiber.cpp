// simt_fiber.cpp — the fiber layer of the SIMT emulator: context switch, stacks, and the
// fiber-switch benchmark (see simt_fiber.h).
#include "simt/simt_fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <vector>

#include "simt/simt.cuh"

// ---------------------------------------------------------------------------------------
// Context switch. simt_fiber_switch saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer to *save_sp, loads next_sp
// and restores the same set from there. A new fiber's stack is prepared so that the
// first switch "returns" into simt_fiber_trampoline, which calls entry(arg) from r13/r12.
#if SIMT_FIBER_ASM
extern "C" void simt_fiber_switch(void** save_sp, void* next_sp);
extern "C" void simt_fiber_trampoline();
asm(R"(
  .text
  .globl simt_fiber_switch
  .hidden simt_fiber_switch
  .type simt_fiber_switch, @function
  .p2align 4
simt_fiber_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size simt_fiber_switch, .-simt_fiber_switch

  .globl simt_fiber_trampoline
  .hidden simt_fiber_trampoline
  .type simt_fiber_trampoline, @function
  .p2align 4
simt_fiber_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  endbr64
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size simt_fiber_trampoline, .-simt_fiber_trampoline
)");
#endif

namespace simt::emu::fiber {

#if SIMT_FIBER_ASM
void make_context(Context& ctx, const Stack& stack, EntryFn entry, void* arg) {
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  auto top = reinterpret_cast<uintptr_t>(stack.base + stack.bytes) & ~uintptr_t{15};
  // Ten slots: FP control, r15, r14, r13, r12, rbx, rbp, return address, 2 padding. The
  // trampoline then starts with a 16-byte aligned stack pointer, as the ABI wants at a call.
  auto* slots = reinterpret_cast<uint64_t*>(top - 80);
  slots[0] = mxcsr | (uint64_t{fpcw} << 32);
  slots[1] = 0;
  slots[2] = 0;
  slots[3] = reinterpret_cast<uint64_t>(entry);
  slots[4] = reinterpret_cast<uint64_t>(arg);
  slots[5] = 0;
  slots[6] = 0;
  slots[7] = reinterpret_cast<uint64_t>(&simt_fiber_trampoline);
  slots[8] = 0;
  slots[9] = 0;
  ctx.sp = slots;
}
#else
void ucontext_entry(unsigned hi, unsigned lo, unsigned fhi, unsigned flo) {
  auto arg = reinterpret_cast<void*>((uintptr_t{hi} << 32) | lo);
  auto entry = reinterpret_cast<EntryFn>((uintptr_t{fhi} << 32) | flo);
  entry(arg);
}

void make_context(Context& ctx, const Stack& stack, EntryFn entry, void* arg) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.base;
  ctx.uc.uc_stack.ss_size = stack.bytes;
  ctx.uc.uc_link = nullptr;
  auto a = reinterpret_cast<uintptr_t>(arg);
  auto e = reinterpret_cast<uintptr_t>(entry);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4, unsigned(a >> 32), unsigned(a),
              unsigned(e >> 32), unsigned(e));
}
#endif

// ---------------------------------------------------------------------------------------
// Stacks: mmap'ed, guard page below (stacks grow down), pooled per OS thread because a
// launch may need thousands and mmap/mprotect per launch would dominate small launches.
constexpr std::size_t kStackBytes = SIMT_ASAN ? (256u << 10) : (128u << 10);
constexpr std::size_t kMaxPooledStacks = 4096;

std::size_t page_bytes() {
  static const std::size_t bytes = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return bytes;
}

// Frames that never returned (finished or abandoned fibers) leave ASan's stack poison in
// the shadow; clear it before the memory goes back to the system and gets reused.
void unmap_stack(const Stack& s) {
#if SIMT_ASAN
  __asan_unpoison_memory_region(s.base, s.bytes);
#endif
  munmap(s.mapping, s.mapping_bytes);
}

struct StackPool {
  std::vector<Stack> free;
  ~StackPool() {
    for (const Stack& s : free) unmap_stack(s);
  }
};

thread_local StackPool stack_pool;

Stack acquire_stack() {
  if (!stack_pool.free.empty()) {
    Stack s = stack_pool.free.back();
    stack_pool.free.pop_back();
#if SIMT_ASAN
    // A fiber abandoned after an error leaves poisoned frames behind.
    __asan_unpoison_memory_region(s.base, s.bytes);
#endif
    return s;
  }
  Stack s;
  s.bytes = kStackBytes;
  s.mapping_bytes = kStackBytes + page_bytes();
  void* p = mmap(nullptr, s.mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) throw ::simt::Error("simt: mmap of a fiber stack failed (too many emulated threads?)");
  s.mapping = static_cast<char*>(p);
  if (mprotect(s.mapping, page_bytes(), PROT_NONE) != 0) {
    munmap(p, s.mapping_bytes);
    throw ::simt::Error("simt: mprotect of a fiber stack guard page failed");
  }
  s.base = s.mapping + page_bytes();
  return s;
}

void release_stack(const Stack& s) {
  if (stack_pool.free.size() < kMaxPooledStacks) {
    stack_pool.free.push_back(s);
  } else {
    unmap_stack(s);
  }
}

// Each stack costs two memory mappings (guard + stack); stay well inside vm.max_map_count.
std::size_t max_live_fibers() {
  static const std::size_t limit = [] {
    std::size_t maps = 65530;
    std::ifstream in("/proc/sys/vm/max_map_count");
    if (in) in >> maps;
    return maps > 16384 ? (maps - 8192) / 2 : maps / 4;
  }();
  return limit;
}

}  // namespace simt::emu::fiber

// ---------------------------------------------------------------------------------------
// Benchmark: one fiber bouncing back and forth with the caller.
namespace simt {
namespace {
struct SwitchBench {
  emu::fiber::Context main;
  emu::fiber::Context fiber;
  emu::fiber::Stack stack;
  void* fake_stack = nullptr;
  const void* main_bottom = nullptr;
  std::size_t main_size = 0;
};

void switch_bench_main(void* arg) {
  auto* s = static_cast<SwitchBench*>(arg);
  emu::fiber::asan_finish(nullptr, &s->main_bottom, &s->main_size);
  while (true) {
    emu::fiber::asan_start(&s->fake_stack, s->main_bottom, s->main_size);
    emu::fiber::switch_context(s->fiber, s->main);
    emu::fiber::asan_finish(s->fake_stack, nullptr, nullptr);
  }
}
}  // namespace

double measure_fiber_switch_ns(int64_t switches) {
  if (switches < 2) throw Error("simt: measure_fiber_switch_ns needs at least 2 switches");
  SwitchBench s;
  s.stack = emu::fiber::acquire_stack();
  emu::fiber::make_context(s.fiber, s.stack, &switch_bench_main, &s);
  void* main_fake = nullptr;
  const int64_t round_trips = switches / 2;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < round_trips; ++i) {
    emu::fiber::asan_start(&main_fake, s.stack.base, s.stack.bytes);
    emu::fiber::switch_context(s.main, s.fiber);
    emu::fiber::asan_finish(main_fake, nullptr, nullptr);
  }
  const auto stop = std::chrono::steady_clock::now();
  emu::fiber::release_stack(s.stack);  // the benchmark fiber is abandoned mid-loop; its stack is reused
  return std::chrono::duration<double, std::nano>(stop - start).count() / static_cast<double>(2 * round_trips);
}

}  // namespace simt
