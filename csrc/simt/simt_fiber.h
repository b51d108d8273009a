// simt_fiber.h — fibers for the SIMT emulator (g++ only, internal to csrc/simt).
//
// A fiber is a stack plus a saved context. On x86-64 the switch is a hand-written routine
// (callee-saved registers, MXCSR and x87 control word; about 10 ns, no syscall); elsewhere
// ucontext. Stacks are mmap'ed with a guard page below and pooled per OS thread. When
// built with AddressSanitizer every switch is announced to ASan so it follows the stacks.
#pragma once

#include <cstddef>
#include <cstdint>

// The hand-written switch is x86-64 only; define SIMT_FIBER_UCONTEXT to test the fallback.
#if defined(__x86_64__) && !defined(SIMT_FIBER_UCONTEXT)
#define SIMT_FIBER_ASM 1
#else
#define SIMT_FIBER_ASM 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define SIMT_ASAN 0
#endif

#if !SIMT_FIBER_ASM
#include <ucontext.h>
#endif

#if SIMT_FIBER_ASM
extern "C" void simt_fiber_switch(void** save_sp, void* next_sp);
#endif

namespace simt::emu::fiber {

using EntryFn = void (*)(void*);

struct Stack {
  char* mapping = nullptr;  // guard page + usable stack
  std::size_t mapping_bytes = 0;
  char* base = nullptr;     // lowest usable address
  std::size_t bytes = 0;
};

#if SIMT_FIBER_ASM
struct Context {
  void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { simt_fiber_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// Prepares ctx so that the first switch to it runs entry(arg) on `stack`. entry must
// never return (switch away for good instead).
void make_context(Context& ctx, const Stack& stack, EntryFn entry, void* arg);

// ASan must be told when execution moves to another stack (start before the switch,
// finish right after it on the new stack); a null save slot means the fiber is ending.
inline void asan_start(void** fake_stack_save, const void* bottom, std::size_t size) {
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

inline void asan_finish(void* fake_stack_save, const void** old_bottom, std::size_t* old_size) {
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake_stack_save, old_bottom, old_size);
#else
  (void)fake_stack_save, (void)old_bottom, (void)old_size;
#endif
}

// A stack from this OS thread's pool (or a fresh mapping); release gives it back.
Stack acquire_stack();
void release_stack(const Stack& s);

// How many stacks may be live at once: each costs two mappings (guard + stack), and
// vm.max_map_count bounds the mappings of a process.
std::size_t max_live_fibers();

}  // namespace simt::emu::fiber
