// The CPU emulation's runtime (cuda_emulation.h): fibers for the threads of a block, their cooperative scheduler,
// the barriers, the warps' shuffle exchange and the launch.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emulation.h"

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim;
dim3 gridDim;

namespace tokred::emulation {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxThreads = 1024;                // per block, as on every GPU since sm_20
constexpr size_t kMaxDynamicShared = 48 * 1024;  // a GPU's default limit per block
constexpr size_t kStackBytes = 256 * 1024;       // per thread, of address space: only touched pages are backed

enum class State { kReady, kAtSyncthreads, kAtWarpBarrier, kExited };

// One emulated thread. Its context and stack stay allocated across launches; the rest is its place in the block.
struct Fiber {
  Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    TORCH_CHECK(memory != MAP_FAILED, "tokred CUDA emulation: could not map a thread's stack: ", std::strerror(errno));
    mapping = static_cast<unsigned char*>(memory);
    mprotect(mapping, page, PROT_NONE);  // a guard page: a stack overflow faults instead of corrupting memory
    stack = mapping + page;
    mapped = page + kStackBytes;
  }
  ~Fiber() { munmap(mapping, mapped); }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  ucontext_t context;  // not movable: glibc points into it
  unsigned char* mapping;
  unsigned char* stack;
  size_t mapped;
  uint3 index{};
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  State state = State::kReady;
  const char* intrinsic = "";  // the barrier it waits at
  std::source_location where;
  long warp_barriers = 0;  // passed so far in this block; the parity picks the shuffle's exchange slot
};

// A warp's barrier and its shuffle exchange. Double-buffered, so that one barrier per shuffle is enough: a lane writes
// slot p again only two shuffles later, after every lane has passed the barrier in between, so after every lane has
// read slot p.
struct Warp {
  int arrived = 0;
  unsigned char slots[2][32][8];
};

// The launch being run: one at a time in the process (launch_mutex), on the thread that called it.
struct Grid {
  const LaunchConfig* config = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  int threads = 0;  // per block
  int current = 0;  // the running fiber
  int at_syncthreads = 0;
  int exited = 0;
  std::exception_ptr failure;
};

std::mutex launch_mutex;
std::vector<std::unique_ptr<Fiber>> fibers;  // the first grid.threads are the block's threads
std::vector<Warp> warps;
struct alignas(16) SharedChunk {
  unsigned char bytes[16];
};
std::vector<SharedChunk> dynamic_shared;
Grid grid;
ucontext_t scheduler;

const char* const kShuffleNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};

std::string site(const std::source_location& where) {
  std::string path = std::filesystem::path(where.file_name()).lexically_normal().string();
  const auto csrc = path.rfind("csrc/");
  if (csrc != std::string::npos) path.erase(0, csrc);
  return path + ":" + std::to_string(where.line());
}

bool same_line(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// "threads 0-99, 128-227" (the first ranges only, when there are many).
std::string thread_list(const std::vector<int>& ids) {
  std::string out = ids.size() == 1 ? "thread " : "threads ";
  int ranges = 0;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (ranges++ == 8) return out + ", ... (" + std::to_string(ids.size()) + " threads)";
    if (i > 0) out += ", ";
    out += std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
    i = j + 1;
  }
  return out;
}

// Where each of the threads [first, first + count) of the block stands, grouped: "\n  threads 0-99: exited".
std::string where_threads_are(int first, int count) {
  std::map<std::string, std::vector<int>> groups;  // what a thread does -> the threads doing it
  std::vector<std::string> order;
  for (int t = first; t < first + count; ++t) {
    const Fiber& f = *fibers[t];
    std::string doing = f.state == State::kExited ? "exited" : "ready to run";
    if (f.state == State::kAtSyncthreads || f.state == State::kAtWarpBarrier)
      doing = std::string("at ") + f.intrinsic + " (" + site(f.where) + ")";
    auto& ids = groups[doing];
    if (ids.empty()) order.push_back(doing);
    ids.push_back(t);
  }
  std::string out;
  for (const auto& doing : order) out += "\n  " + thread_list(groups[doing]) + ": " + doing;
  return out;
}

constexpr const char* kBarrierRule =
    "\nEvery thread of a block must reach each __syncthreads(), at the same line, and every lane of a warp each "
    "__shfl_*_sync() and __syncwarp(): a barrier in divergent code is a bug of the kernel.";

// Ends the launch: "tokred CUDA emulation: <what> in block (x, y, z) of kernel <name> (launched at ...): <why>".
[[noreturn]] void fail(const std::string& what, const std::string& why) {
  const LaunchConfig& c = *grid.config;
  TORCH_CHECK(false, "tokred CUDA emulation: ", what, " in block (", blockIdx.x, ", ", blockIdx.y, ", ", blockIdx.z,
              ") of kernel ", c.kernel, " (launched at ", site(c.where), " with ", c.grid.x, "x", c.grid.y, "x",
              c.grid.z, " blocks of ", c.block.x, "x", c.block.y, "x", c.block.z, " threads): ", why);
}

Fiber& running() { return *fibers[grid.current]; }

void enter(int t) {
  grid.current = t;
  threadIdx = fibers[t]->index;
}

// Suspends the running fiber (waiting or exited) for the next ready one after it, or for the scheduler when none is
// ready: then the block is done or deadlocked.
void switch_away(Fiber& self) {
  for (int step = 1; step < grid.threads; ++step) {
    const int next = (grid.current + step) % grid.threads;
    if (fibers[next]->state == State::kReady) {
      enter(next);
      swapcontext(&self.context, &fibers[next]->context);
      return;
    }
  }
  swapcontext(&self.context, &scheduler);
}

// Every fiber runs the kernel once per block, then waits to be started on the next one.
void fiber_main() {
  for (;;) {
    std::exception_ptr failure;
    try {
      grid.body(grid.context);
    } catch (...) {  // ends the launch: the scheduler rethrows it on the launching thread's stack
      failure = std::current_exception();
    }
    Fiber& self = running();
    if (failure) {
      grid.failure = failure;
      swapcontext(&self.context, &scheduler);
    }
    self.state = State::kExited;
    ++grid.exited;
    switch_away(self);
  }
}

Warp& warp_of(const Fiber& f, unsigned mask, const char* intrinsic, const std::source_location& where) {
  const int warp = f.linear / warpSize;
  const int lanes = std::min(warpSize, grid.threads - warp * warpSize);
  if (mask != kFullMask)
    fail(c10::str(intrinsic, " with mask 0x", std::hex, mask, " at ", site(where)),
         "only the full mask 0xffffffff is emulated");
  if (lanes != warpSize)
    fail(c10::str(intrinsic, " at ", site(where), " in warp ", warp),
         c10::str("the warp has ", lanes, " lanes, and the full mask names lanes that do not exist: make the block's "
                  "threads a multiple of 32"));
  return warps[warp];
}

// Waits until every lane of the warp is at the same intrinsic after as many warp barriers.
void warp_barrier(Fiber& self, Warp& warp, const char* intrinsic, const std::source_location& where) {
  self.state = State::kAtWarpBarrier;
  self.intrinsic = intrinsic;
  self.where = where;
  if (++warp.arrived < warpSize) {
    switch_away(self);
  } else {
    warp.arrived = 0;
    const int first = self.linear / warpSize * warpSize;
    for (int t = first; t < first + warpSize; ++t) {
      Fiber& lane = *fibers[t];
      if (std::strcmp(lane.intrinsic, intrinsic) != 0 || lane.warp_barriers != self.warp_barriers)
        fail(c10::str("divergent warp ", first / warpSize),
             "its lanes meet at different warp barriers" + where_threads_are(first, warpSize) + kBarrierRule);
      lane.state = State::kReady;
    }
  }
  ++self.warp_barriers;
}

// The lane whose value `lane` reads, as PTX's shfl.sync defines it (its own when the source is invalid): segments of
// `width` lanes; up reads no lane below its segment, down and xor none above it (xor may read an earlier segment).
int source_lane(ShuffleMode mode, int lane, int b, int width) {
  const int segment_bits = ~(width - 1) & (warpSize - 1);
  const int min_lane = lane & segment_bits, max_lane = min_lane | (width - 1);
  long j = lane;
  bool valid = true;
  switch (mode) {
    case ShuffleMode::kIdx:
      j = min_lane | (b & (width - 1));
      break;
    case ShuffleMode::kUp:
      j = static_cast<long>(lane) - b;
      valid = j >= min_lane;
      break;
    case ShuffleMode::kDown:
      j = static_cast<long>(lane) + b;
      valid = j <= max_lane;
      break;
    case ShuffleMode::kXor:
      j = lane ^ b;
      valid = j >= 0 && j <= max_lane;
      break;
  }
  return valid ? static_cast<int>(j) : lane;
}

void check_launch(const LaunchConfig& c) {
  const long threads = static_cast<long>(c.block.x) * c.block.y * c.block.z;
  const auto limits = [&] {
    return c10::str(" for kernel ", c.kernel, " (launched at ", site(c.where), "): ", c.grid.x, "x", c.grid.y, "x",
                    c.grid.z, " blocks of ", c.block.x, "x", c.block.y, "x", c.block.z, " threads, ", c.shared_bytes,
                    " bytes of dynamic shared memory");
  };
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && c.block.z <= 64,
              "tokred CUDA emulation: invalid block (1 to 1024 threads, z at most 64)", limits());
  TORCH_CHECK(c.grid.x >= 1 && c.grid.y >= 1 && c.grid.z >= 1 && c.grid.x <= 0x7fffffffu && c.grid.y <= 65535 &&
                  c.grid.z <= 65535,
              "tokred CUDA emulation: invalid grid (a GPU refuses an empty one: skip the launch when there is no work)",
              limits());
  TORCH_CHECK(c.shared_bytes <= kMaxDynamicShared,
              "tokred CUDA emulation: more than the 48 KiB of dynamic shared memory a GPU grants by default", limits());
}

// The fibers' fresh contexts for a launch: each starts in fiber_main.
void prepare_fibers(int threads, const dim3& block) {
  while (fibers.size() < static_cast<size_t>(threads)) fibers.push_back(std::make_unique<Fiber>());
  warps.assign((threads + warpSize - 1) / warpSize, Warp{});
  for (int t = 0; t < threads; ++t) {
    Fiber& f = *fibers[t];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.linear = t;
    f.index = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
  }
}

void run_block() {
  for (int t = 0; t < grid.threads; ++t) {
    Fiber& f = *fibers[t];
    f.state = State::kReady;
    f.warp_barriers = 0;
  }
  for (Warp& w : warps) w.arrived = 0;
  grid.at_syncthreads = grid.exited = 0;
  std::memset(dynamic_shared.data(), 0xff, dynamic_shared.size() * sizeof(SharedChunk));
  enter(0);
  swapcontext(&scheduler, &fibers[0]->context);
  if (grid.failure) std::rethrow_exception(std::exchange(grid.failure, nullptr));
  if (grid.exited != grid.threads)
    fail("deadlock", "no thread can go on" + where_threads_are(0, grid.threads) + kBarrierRule);
}

}  // namespace

void sync_block(const std::source_location& where) {
  Fiber& self = running();
  self.state = State::kAtSyncthreads;
  self.intrinsic = "__syncthreads()";
  self.where = where;
  if (++grid.at_syncthreads < grid.threads) {
    switch_away(self);
    return;
  }
  grid.at_syncthreads = 0;
  for (int t = 0; t < grid.threads; ++t)
    if (!same_line(fibers[t]->where, where))
      fail("divergent __syncthreads()",
           "the block's threads wait at different ones" + where_threads_are(0, grid.threads) + kBarrierRule);
  for (int t = 0; t < grid.threads; ++t) fibers[t]->state = State::kReady;
}

void sync_warp(unsigned mask, const std::source_location& where) {
  Fiber& self = running();
  warp_barrier(self, warp_of(self, mask, "__syncwarp()", where), "__syncwarp()", where);
}

const void* shuffle_exchange(const void* value, size_t size, ShuffleMode mode, unsigned mask, int b, int width,
                             const std::source_location& where) {
  const char* name = shuffle_name(mode);
  Fiber& self = running();
  Warp& warp = warp_of(self, mask, name, where);
  if (width < 1 || width > warpSize || (width & (width - 1)) != 0)
    fail(c10::str(name, " at ", site(where), " with width ", width), "the width must be a power of 2 from 1 to 32");
  const int lane = self.linear % warpSize;
  auto& slots = warp.slots[self.warp_barriers & 1];
  std::memcpy(slots[lane], value, size);
  warp_barrier(self, warp, name, where);
  return slots[source_lane(mode, lane, b, width)];
}

unsigned char* dynamic_shared_memory() { return dynamic_shared.data()->bytes; }

const char* shuffle_name(ShuffleMode mode) { return kShuffleNames[static_cast<int>(mode)]; }

void run_grid(const LaunchConfig& config, void (*body)(void*), void* context) {
  check_launch(config);
  const std::lock_guard<std::mutex> lock(launch_mutex);
  grid = Grid{&config, body, context, static_cast<int>(config.block.x * config.block.y * config.block.z)};
  prepare_fibers(grid.threads, config.block);
  dynamic_shared.assign((config.shared_bytes + sizeof(SharedChunk) - 1) / sizeof(SharedChunk) + 1, SharedChunk{});
  gridDim = config.grid;
  blockDim = config.block;
  for (unsigned z = 0; z < config.grid.z; ++z)
    for (unsigned y = 0; y < config.grid.y; ++y)
      for (unsigned x = 0; x < config.grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block();
      }
}

}  // namespace tokred::emulation
