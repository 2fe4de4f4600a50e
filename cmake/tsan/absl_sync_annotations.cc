// ThreadSanitizer annotations for Debian's abseil synchronization (TESSERA_SANITIZE=thread builds only).
// libabsl is not built with TSan, so absl::Mutex, CondVar and Notification lock and wake through atomics and
// futexes that TSan cannot see: every member guarded by an absl::Mutex would read as a data race, and so
// would everything gRPC hands between its threads under its own absl::Mutex (gpr_mu, grpc_core::Mutex). This
// shared library, linked into every executable ahead of libabsl_synchronization, interposes the functions
// below for all callers (our code, gRPC, abseil's own PLT calls), tells TSan what abseil's own TSan build
// would have told it (lock, unlock, happens-before) and calls the real function, found with dlsym(RTLD_NEXT).
//
// Only the functions that do not call one another through the PLT are interposed (abseil's *WithTimeout
// variants call the *WithDeadline ones, ReleasableMutexLock::Release calls Unlock, ...), so each lock is told
// to TSan once. ~Mutex is not: gRPC destroys its mutexes after reference counts TSan cannot see, which would
// read as destroy-while-locked races; freeing the memory drops TSan's state for the mutex anyway.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#ifndef TESSERA_ABSL_NAMESPACE
#error "TESSERA_ABSL_NAMESPACE (abseil's inline namespace as mangled, e.g. \"7debian3\") comes from CMake"
#endif

namespace {

using absl::Condition;
using absl::CondVar;
using absl::Mutex;
using absl::Time;

void* NextSymbol(const char* symbol) {
  void* real = dlsym(RTLD_NEXT, symbol);
  if (real == nullptr) {
    std::fprintf(stderr, "tessera_tsan_absl: no %s after this library (%s)\n", symbol, dlerror());
    std::abort();
  }
  return real;
}

}  // namespace

// TSAN_INTERPOSE(prefix, rest, ret, name, params...) defines absl::<inline namespace>::<rest>, whose mangled
// name is prefix ("_ZN", or "_ZNK" for const methods) + "4absl" + the namespace + rest, as the extern "C"
// function `name` with the member function's calling convention (this first); name##Real() is abseil's own.
#define TSAN_ABSL_SYMBOL(prefix, rest) prefix "4absl" TESSERA_ABSL_NAMESPACE rest
#define TSAN_INTERPOSE(prefix, rest, ret, name, ...)                                                     \
  using name##Fn = ret (*)(__VA_ARGS__);                                                                 \
  static name##Fn name##Real() {                                                                         \
    static const name##Fn real = reinterpret_cast<name##Fn>(NextSymbol(TSAN_ABSL_SYMBOL(prefix, rest))); \
    return real;                                                                                         \
  }                                                                                                      \
  extern "C" ret name(__VA_ARGS__) __asm__(TSAN_ABSL_SYMBOL(prefix, rest));                              \
  extern "C" ret name(__VA_ARGS__)

namespace {

// Mutexes this thread holds in reader mode: Await and CondVar::Wait release and retake the lock in the mode
// it is held, and TSan must be told which. Plain arrays: gRPC threads lock mutexes while thread-locals are
// destroyed.
constexpr int kMaxReaderLocks = 32;
thread_local const Mutex* reader_held[kMaxReaderLocks];
thread_local int reader_count = 0;

void AddReader(const Mutex* mu) {
  if (reader_count < kMaxReaderLocks) reader_held[reader_count++] = mu;
}
void RemoveReader(const Mutex* mu) {
  for (int i = reader_count - 1; i >= 0; --i) {
    if (reader_held[i] == mu) {
      reader_held[i] = reader_held[--reader_count];
      return;
    }
  }
}
unsigned ModeFlags(const Mutex* mu) {
  for (int i = 0; i < reader_count; ++i) {
    if (reader_held[i] == mu) return __tsan_mutex_read_lock;
  }
  return 0;
}

// The lock is held on entry and on return but released while blocked (Await, CondVar::Wait): to TSan an
// unlock and a lock. Accesses inside `wait` (conditions abseil evaluates) are ignored, as in abseil's own
// TSan build.
template <typename F>
auto ReleaseAndRetake(Mutex* mu, F wait) {
  const unsigned mode = ModeFlags(mu);
  __tsan_mutex_pre_unlock(mu, mode);
  __tsan_mutex_post_unlock(mu, mode);
  __tsan_mutex_pre_lock(mu, mode);
  auto result = wait();
  __tsan_mutex_post_lock(mu, mode, 0);
  return result;
}

// Notification keeps its flag in a std::atomic<bool> after its Mutex; HasBeenNotified() is inline (our code,
// so instrumented) and acquire-loads that flag, so Notify releases on the flag's address.
struct NotificationLayout {
  Mutex mutex;
  std::atomic<bool> notified_yet;
};
static_assert(sizeof(NotificationLayout) == sizeof(absl::Notification), "absl::Notification layout changed");
void* FlagOf(const absl::Notification* n) {
  return const_cast<char*>(reinterpret_cast<const char*>(n) + offsetof(NotificationLayout, notified_yet));
}

}  // namespace

// --- Mutex: exclusive
// --------------------------------------------------------------------------------------------

TSAN_INTERPOSE("_ZN", "5Mutex4LockEv", void, TsanMutexLock, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, 0);
  TsanMutexLockReal()(mu);
  __tsan_mutex_post_lock(mu, 0, 0);
}

TSAN_INTERPOSE("_ZN", "5Mutex6UnlockEv", void, TsanMutexUnlock, Mutex* mu) {
  __tsan_mutex_pre_unlock(mu, 0);
  TsanMutexUnlockReal()(mu);
  __tsan_mutex_post_unlock(mu, 0);
}

TSAN_INTERPOSE("_ZN", "5Mutex7TryLockEv", bool, TsanMutexTryLock, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, __tsan_mutex_try_lock);
  const bool locked = TsanMutexTryLockReal()(mu);
  __tsan_mutex_post_lock(mu, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return locked;
}

TSAN_INTERPOSE("_ZN", "5Mutex8LockWhenERKNS0_9ConditionE", void, TsanMutexLockWhen, Mutex* mu,
               const Condition& cond) {
  __tsan_mutex_pre_lock(mu, 0);
  TsanMutexLockWhenReal()(mu, cond);
  __tsan_mutex_post_lock(mu, 0, 0);
}

// LockWhenWithTimeout calls this.
TSAN_INTERPOSE("_ZN", "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", bool,
               TsanMutexLockWhenWithDeadline, Mutex* mu, const Condition& cond, Time deadline) {
  __tsan_mutex_pre_lock(mu, 0);
  const bool met = TsanMutexLockWhenWithDeadlineReal()(mu, cond, deadline);  // holds the lock either way
  __tsan_mutex_post_lock(mu, 0, 0);
  return met;
}

// --- Mutex: shared
// -----------------------------------------------------------------------------------------------

TSAN_INTERPOSE("_ZN", "5Mutex10ReaderLockEv", void, TsanMutexReaderLock, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, __tsan_mutex_read_lock);
  TsanMutexReaderLockReal()(mu);
  __tsan_mutex_post_lock(mu, __tsan_mutex_read_lock, 0);
  AddReader(mu);
}

TSAN_INTERPOSE("_ZN", "5Mutex12ReaderUnlockEv", void, TsanMutexReaderUnlock, Mutex* mu) {
  RemoveReader(mu);
  __tsan_mutex_pre_unlock(mu, __tsan_mutex_read_lock);
  TsanMutexReaderUnlockReal()(mu);
  __tsan_mutex_post_unlock(mu, __tsan_mutex_read_lock);
}

TSAN_INTERPOSE("_ZN", "5Mutex13ReaderTryLockEv", bool, TsanMutexReaderTryLock, Mutex* mu) {
  __tsan_mutex_pre_lock(mu, __tsan_mutex_try_read_lock);
  const bool locked = TsanMutexReaderTryLockReal()(mu);
  __tsan_mutex_post_lock(mu, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed, 0);
  if (locked) AddReader(mu);
  return locked;
}

TSAN_INTERPOSE("_ZN", "5Mutex14ReaderLockWhenERKNS0_9ConditionE", void, TsanMutexReaderLockWhen, Mutex* mu,
               const Condition& cond) {
  __tsan_mutex_pre_lock(mu, __tsan_mutex_read_lock);
  TsanMutexReaderLockWhenReal()(mu, cond);
  __tsan_mutex_post_lock(mu, __tsan_mutex_read_lock, 0);
  AddReader(mu);
}

// ReaderLockWhenWithTimeout calls this.
TSAN_INTERPOSE("_ZN", "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", bool,
               TsanMutexReaderLockWhenWithDeadline, Mutex* mu, const Condition& cond, Time deadline) {
  __tsan_mutex_pre_lock(mu, __tsan_mutex_read_lock);
  const bool met = TsanMutexReaderLockWhenWithDeadlineReal()(mu, cond, deadline);
  __tsan_mutex_post_lock(mu, __tsan_mutex_read_lock, 0);
  AddReader(mu);
  return met;
}

// --- Waiting with the lock held
// ----------------------------------------------------------------------------------

TSAN_INTERPOSE("_ZN", "5Mutex5AwaitERKNS0_9ConditionE", void, TsanMutexAwait, Mutex* mu,
               const Condition& cond) {
  ReleaseAndRetake(mu, [&] {
    TsanMutexAwaitReal()(mu, cond);
    return 0;
  });
}

// AwaitWithTimeout calls this.
TSAN_INTERPOSE("_ZN", "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE", bool,
               TsanMutexAwaitWithDeadline, Mutex* mu, const Condition& cond, Time deadline) {
  return ReleaseAndRetake(mu, [&] { return TsanMutexAwaitWithDeadlineReal()(mu, cond, deadline); });
}

TSAN_INTERPOSE("_ZN", "7CondVar4WaitEPNS0_5MutexE", void, TsanCondVarWait, CondVar* cv, Mutex* mu) {
  ReleaseAndRetake(mu, [&] {
    TsanCondVarWaitReal()(cv, mu);
    return 0;
  });
}

// WaitWithTimeout calls this.
TSAN_INTERPOSE("_ZN", "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE", bool, TsanCondVarWaitWithDeadline,
               CondVar* cv, Mutex* mu, Time deadline) {
  return ReleaseAndRetake(mu, [&] { return TsanCondVarWaitWithDeadlineReal()(cv, mu, deadline); });
}

// --- Happens-before edges abseil makes through atomics
// -----------------------------------------------------------

// The waits (WaitForNotification*) take the Notification's mutex, whose last holder set the flag: only the
// inline HasBeenNotified() needs this release.
TSAN_INTERPOSE("_ZN", "12Notification6NotifyEv", void, TsanNotificationNotify, absl::Notification* n) {
  __tsan_release(FlagOf(n));
  TsanNotificationNotifyReal()(n);
}

// Only the last DecrementCount takes the counter's mutex; the others count down with an atomic.
TSAN_INTERPOSE("_ZN", "15BlockingCounter14DecrementCountEv", void, TsanBlockingCounterDecrementCount,
               absl::BlockingCounter* counter) {
  __tsan_release(counter);
  TsanBlockingCounterDecrementCountReal()(counter);
}

TSAN_INTERPOSE("_ZN", "15BlockingCounter4WaitEv", void, TsanBlockingCounterWait,
               absl::BlockingCounter* counter) {
  TsanBlockingCounterWaitReal()(counter);
  __tsan_acquire(counter);
}

namespace {

// Interposition works only if the dynamic linker finds these definitions before abseil's: check once at
// start-up rather than run with annotations that silently never happen.
[[gnu::constructor]] void CheckInterposed() {
  void* found = dlsym(RTLD_DEFAULT, TSAN_ABSL_SYMBOL("_ZN", "5Mutex4LockEv"));
  Dl_info found_in{}, self{};
  if (found == nullptr || dladdr(found, &found_in) == 0 ||
      dladdr(reinterpret_cast<void*>(&CheckInterposed), &self) == 0 || found_in.dli_fbase != self.dli_fbase) {
    std::fprintf(
        stderr,
        "tessera_tsan_absl: absl::Mutex::Lock resolves to %s, not to %s: link libtessera_tsan_absl.so "
        "before libabsl_synchronization.so\n",
        found_in.dli_fname ? found_in.dli_fname : "nothing",
        self.dli_fname ? self.dli_fname : "this library");
    std::abort();
  }
}

}  // namespace
