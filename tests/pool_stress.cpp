// Hammers the kernels' thread pool (llmos_parallel) with back-to-back jobs of 2 and 64 tasks and
// counts the tasks that had not run exactly once when their job returned ("early") and at the
// end ("wrong"), then prints how often the pool went solo. Built and run by tests/test_quant.py
// against the kernel library: pool_stress JOBS [THREADS [SLOW_US]], SLOW_US: a task a worker runs
// sleeps that long, one the caller runs a thirtieth of it (so that workers wake in time to claim
// tasks, and the caller, done with its own, waits on theirs).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

extern "C" void llmos_parallel(void (*)(void*, int64_t), void*, int64_t);
extern "C" void llmos_quant_set_threads(int);
extern "C" int64_t llmos_quant_stragglers(void);

static std::thread::id caller;
static int slow_us = 0;
struct Hits { std::atomic<int>* at; };
static void hit(void* p, int64_t i) {
    if (slow_us) {
        const int us = std::this_thread::get_id() == caller ? slow_us / 30 : slow_us;
        std::this_thread::sleep_for(std::chrono::microseconds(us));
    }
    ((Hits*)p)->at[i].fetch_add(1, std::memory_order_relaxed);
}

int main(int argc, char** argv) {
    const int64_t jobs = argc > 1 ? atoll(argv[1]) : 100000;
    llmos_quant_set_threads(argc > 2 ? atoi(argv[2]) : 2);
    slow_us = argc > 3 ? atoi(argv[3]) : 0;
    caller = std::this_thread::get_id();
    std::vector<std::atomic<int>> hits(jobs * 64);
    int64_t early = 0, wrong = 0;
    for (int64_t j = 0; j < jobs; j++) {
        const int64_t count = j % 2 ? 64 : 2;
        Hits h{&hits[j * 64]};              // on the stack, as the kernels' job structs are
        llmos_parallel(hit, &h, count);
        for (int64_t i = 0; i < count; i++) early += h.at[i].load() != 1;
    }
    for (int64_t j = 0; j < jobs; j++)
        for (int64_t i = 0; i < 64; i++) wrong += hits[j * 64 + i].load() != (i < (j % 2 ? 64 : 2) ? 1 : 0);
    printf("%lld %lld %lld\n", (long long)early, (long long)wrong, (long long)llmos_quant_stragglers());
    return 0;
}
