// One rank of a Gloo group that meets through a coordinator's Rendezvous service: joins, all-reduces a
// vector of `rank + i` and checks the sum. Exit 0 when right, 1 with one line on stderr otherwise.
//   rendezvous_rank_main ADDRESS RANK SIZE
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/gloo_communicator.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: rendezvous_rank_main ADDRESS RANK SIZE\n");
    return 2;
  }
  tessera::GlooOptions options;
  options.group = "tp0";
  options.store_address = argv[1];
  options.rank = std::atoi(argv[2]);
  options.size = std::atoi(argv[3]);
  options.timeout = std::chrono::seconds(20);
  auto comm = tessera::GlooCommunicator::Create(options);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", options.rank, std::string(comm.status().message()).c_str());
    return 1;
  }
  const int n = 777;
  std::vector<float> data(n);
  for (int i = 0; i < n; ++i) data[i] = static_cast<float>(options.rank + i);
  tessera::Tensor t(data.data(), tessera::DType::kF32, {n});
  if (absl::Status s = (*comm)->AllReduceSum(t); !s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", options.rank, std::string(s.message()).c_str());
    return 1;
  }
  const int size = options.size;
  for (int i = 0; i < n; ++i) {
    const float expected = static_cast<float>(size * (size - 1) / 2 + size * i);
    if (std::fabs(data[i] - expected) > 1e-3f * std::fabs(expected) + 1e-3f) {
      std::fprintf(stderr, "rank %d: element %d is %f, expected %f\n", options.rank, i, data[i], expected);
      return 1;
    }
  }
  return 0;
}
