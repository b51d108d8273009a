/* The native stack of a process that dies of a fatal signal, for `make gpu-check`'s GPU tests
 * (benchmarks/gpu_check.py preloads it there: LD_PRELOAD).
 *
 * Python's faulthandler prints the Python frames of a crash, not the C++ ones, and on the GPU
 * machine there is no gdb. Loaded before Python starts, this installs a handler for SIGSEGV,
 * SIGBUS, SIGILL, SIGFPE and SIGABRT that appends the signal and the native frames
 * (backtrace_symbols_fd: "library(symbol+offset) [address]") to the file named by
 * RNN_FUSED_NATIVE_BACKTRACE (not stderr: pytest captures that per test and loses it when the
 * process dies), then dies of the signal as it would have. faulthandler, enabled later,
 * prints its Python frames first and then hands the signal on to this handler.
 * Build: cc -shared -fPIC -o native_backtrace.so native_backtrace.c
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int output_fd = -1;

static void write_text(const char* text) {
  ssize_t ignored = write(output_fd, text, strlen(text));
  (void)ignored;
}

static void on_fatal_signal(int signal_number) {
  void* frames[128];
  const int count = backtrace(frames, 128);
  char header[96];
  snprintf(header, sizeof header, "=== pid %d: signal %d (%s), native frames:\n", (int)getpid(), signal_number,
           strsignal(signal_number));
  write_text(header);
  backtrace_symbols_fd(frames, count, output_fd);
  signal(signal_number, SIG_DFL);
  raise(signal_number);
}

__attribute__((constructor)) static void install(void) {
  const char* path = getenv("RNN_FUSED_NATIVE_BACKTRACE");
  if (path == NULL || path[0] == '\0') return;
  output_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (output_fd < 0) return;
  void* warm[1];
  backtrace(warm, 1); /* loads libgcc's unwinder now, not inside the handler */
  const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
  for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; ++i) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_fatal_signal;
    sigaction(fatal[i], &action, NULL);
  }
}
