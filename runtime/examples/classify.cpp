// classify: the smallest useful program on the bitsmith C API.
//
//   classify ARTIFACT IMAGE.npy [--output NAME] [--top K]
//
// Opens (and so verifies) an artifact, feeds one .npy file to its first input, runs the model and
// prints the K highest scores of a float32 output (default: the first output, K = 5), one
// "rank index score" line each. Built in-tree by the top-level CMakeLists.txt, and out of tree
// against an installed runtime through find_package(bitsmith_runtime) (see CMakeLists.txt here).
#include <bitsmith/runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

static int fail(const char* doing) {
  std::fprintf(stderr, "classify: %s: %s\n", doing, bsm_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: classify ARTIFACT IMAGE.npy [--output NAME] [--top K]\n");
    return 2;
  }
  const char* output_name = nullptr;
  size_t top = 5;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--output") == 0) output_name = argv[i + 1];
    else if (std::strcmp(argv[i], "--top") == 0) top = size_t(std::max(1, std::atoi(argv[i + 1])));
  }

  bsm_model* model = nullptr;
  if (bsm_open(argv[1], &model) != BSM_OK) return fail("cannot open the artifact");
  int status = 1;
  size_t out_index = 0;
  bsm_tensor_info info;
  const void* data = nullptr;
  if (bsm_set_input_npy(model, 0, argv[2]) != BSM_OK) {
    fail("cannot set the input");
  } else if (bsm_run(model) != BSM_OK) {
    fail("the run failed");
  } else if (output_name && bsm_find_output(model, output_name, &out_index) != BSM_OK) {
    fail("no such output");
  } else if (bsm_output_info(model, out_index, &info) != BSM_OK || bsm_output_data(model, out_index, &data) != BSM_OK) {
    fail("cannot read the output");
  } else if (std::strcmp(info.dtype, "float32") != 0) {
    std::fprintf(stderr, "classify: output '%s' is %s, not float32\n", info.name, info.dtype);
  } else {
    const float* scores = static_cast<const float*>(data);
    size_t count = info.num_bytes / sizeof(float);
    std::vector<size_t> order(count);
    std::iota(order.begin(), order.end(), size_t(0));
    top = std::min(top, count);
    // Highest score first; ties keep the lower index first, so the order is deterministic.
    std::partial_sort(order.begin(), order.begin() + long(top), order.end(), [&](size_t a, size_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    });
    std::printf("output '%s': top %zu of %zu\n", info.name, top, count);
    for (size_t r = 0; r < top; ++r) std::printf("%zu %zu %.6g\n", r + 1, order[r], double(scores[order[r]]));
    status = 0;
  }
  bsm_close(model);
  return status;
}
