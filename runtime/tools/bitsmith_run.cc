// bitsmith-run: run a bitsmith artifact on .npy inputs without Python.
//
//   bitsmith-run ARTIFACT --input x.npy [--input y.npy ...] [--output out.npy ...] [--bench N]
//
// Inputs and outputs are matched to the manifest in order, or by name with NAME=FILE. The model
// always runs once (the outputs written come from that run); --bench N then times N more runs
// after --warmup W untimed ones and prints latency percentiles. Uses only the public C API.
// Exit status: 0 success, 2 bad command line, 1 any other failure; messages go to stderr.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bitsmith/runtime.h"

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

const char kUsage[] =
    "usage: bitsmith-run ARTIFACT [--input [NAME=]FILE.npy]... [--output [NAME=]FILE.npy]...\n"
    "                    [--bench N] [--warmup W] [--bench-json FILE] [--threads T] [--quiet]\n"
    "\n"
    "Verify and load the bitsmith artifact in directory ARTIFACT, run it on the .npy inputs (in the\n"
    "manifest's input order, or NAME=FILE), and write outputs to .npy files (in output order, or\n"
    "NAME=FILE). --bench N times N further runs after W warm-up runs (default 3) and prints the\n"
    "p50/p90/p99 latency in ms; --bench-json also writes every run's time to FILE. --threads T sets\n"
    "TVM_NUM_THREADS (default: TVM's choice, the number of physical cores).\n";

struct Options {
  std::string artifact;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  int bench = 0;
  int warmup = 3;
  std::string bench_json;
  std::string threads;
  bool quiet = false;
};

struct UsageError {
  std::string message;
};

struct Failure {
  std::string message;
};

int parse_count(const std::string& flag, const std::string& text, int minimum) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum || value > 10000000) {
    throw UsageError{flag + " needs an integer >= " + std::to_string(minimum) + ", not '" + text + "'"};
  }
  return int(value);
}

Options parse_args(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--version") {
      std::printf("bitsmith-run %s\n", bsm_version());
      std::exit(0);
    } else if (arg == "--input" || arg == "-i") {
      opt.inputs.push_back(value());
    } else if (arg == "--output" || arg == "-o") {
      opt.outputs.push_back(value());
    } else if (arg == "--bench") {
      opt.bench = parse_count(arg, value(), 1);
    } else if (arg == "--warmup") {
      opt.warmup = parse_count(arg, value(), 0);
    } else if (arg == "--bench-json") {
      opt.bench_json = value();
    } else if (arg == "--threads") {
      opt.threads = std::to_string(parse_count(arg, value(), 1));
    } else if (arg == "--quiet" || arg == "-q") {
      opt.quiet = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError{"unknown option " + arg};
    } else if (opt.artifact.empty()) {
      opt.artifact = arg;
    } else {
      throw UsageError{"unexpected argument '" + arg + "' (the artifact is '" + opt.artifact + "')"};
    }
  }
  if (opt.artifact.empty()) throw UsageError{"no ARTIFACT directory given"};
  return opt;
}

void check(bsm_status status, const std::string& doing) {
  if (status != BSM_OK) throw Failure{doing.empty() ? bsm_last_error() : doing + ": " + bsm_last_error()};
}

struct TensorList {
  const char* kind;  // "input" / "output"
  size_t count;
  bsm_status (*info)(const bsm_model*, size_t, bsm_tensor_info*);
  bsm_status (*find)(const bsm_model*, const char*, size_t*);
};

std::string describe(const bsm_tensor_info& info) {
  std::string out = std::string("'") + info.name + "' " + info.dtype + "[";
  for (int32_t d = 0; d < info.ndim; ++d) out += (d ? "," : "") + std::to_string(info.shape[d]);
  return out + "]";
}

std::string describe_all(const bsm_model* model, const TensorList& list) {
  std::string out;
  for (size_t i = 0; i < list.count; ++i) {
    bsm_tensor_info info;
    check(list.info(model, i, &info), "");
    out += (i ? ", " : "") + describe(info);
  }
  return out;
}

// Map each NAME=FILE or FILE argument to a tensor index: named ones by name, the rest in order.
std::vector<std::pair<size_t, std::string>> assign(const bsm_model* model, const TensorList& list,
                                                   const std::vector<std::string>& args) {
  std::vector<std::pair<size_t, std::string>> assigned;
  std::vector<bool> taken(list.count, false);
  size_t next = 0;
  for (const std::string& arg : args) {
    size_t index = 0;
    std::string file = arg;
    size_t eq = arg.find('=');
    if (eq != std::string::npos && list.find(model, arg.substr(0, eq).c_str(), &index) == BSM_OK) {
      file = arg.substr(eq + 1);
    } else {
      while (next < list.count && taken[next]) ++next;
      if (next >= list.count) {
        throw UsageError{"too many --" + std::string(list.kind) + " files: the model has " + std::to_string(list.count) +
                         " " + list.kind + "s (" + describe_all(model, list) + ")"};
      }
      index = next;
    }
    if (taken[index]) throw UsageError{std::string(list.kind) + " " + std::to_string(index) + " is given twice"};
    taken[index] = true;
    assigned.emplace_back(index, file);
  }
  return assigned;
}

double percentile(std::vector<double> sorted, double q) {  // linear interpolation, as numpy's default
  double pos = q / 100.0 * double(sorted.size() - 1);
  size_t lo = size_t(pos);
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - double(lo));
}

void write_bench_json(const std::string& path, const std::vector<double>& ms, int warmup) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw Failure{"cannot create " + path + ": " + std::strerror(errno)};
  std::fprintf(f, "{\"warmup\": %d, \"runs\": %zu, \"ms\": [", warmup, ms.size());
  for (size_t i = 0; i < ms.size(); ++i) std::fprintf(f, "%s%.6f", i ? ", " : "", ms[i]);
  std::fprintf(f, "]}\n");
  if (std::fclose(f) != 0) throw Failure{"cannot write " + path};
}

void bench(bsm_model* model, const Options& opt) {
  std::vector<double> ms(size_t(opt.bench));
  check(bsm_time(model, opt.warmup, opt.bench, ms.data()), "benchmark");
  if (!opt.bench_json.empty()) write_bench_json(opt.bench_json, ms, opt.warmup);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  double mean = 0;
  for (double t : ms) mean += t / double(ms.size());
  std::printf("latency over %d runs (%d warm-up): p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, mean %.3f ms, min %.3f ms\n",
              opt.bench, opt.warmup, percentile(sorted, 50), percentile(sorted, 90), percentile(sorted, 99), mean,
              sorted.front());
}

void run(const Options& opt) {
  if (!opt.threads.empty()) setenv("TVM_NUM_THREADS", opt.threads.c_str(), 1);  // before the pool starts
  bsm_model* model = nullptr;
  check(bsm_open(opt.artifact.c_str(), &model), "");
  struct Closer {
    bsm_model* m;
    ~Closer() { bsm_close(m); }
  } closer{model};
  TensorList inputs{"input", bsm_input_count(model), bsm_input_info, bsm_find_input};
  TensorList outputs{"output", bsm_output_count(model), bsm_output_info, bsm_find_output};

  auto fed = assign(model, inputs, opt.inputs);
  if (fed.size() != inputs.count) {
    throw UsageError{"the model takes " + std::to_string(inputs.count) + (inputs.count == 1 ? " input (" : " inputs (") +
                     describe_all(model, inputs) + "); give one --input FILE.npy for each"};
  }
  for (const auto& [index, file] : fed) check(bsm_set_input_npy(model, index, file.c_str()), "");
  check(bsm_run(model), "");
  for (const auto& [index, file] : assign(model, outputs, opt.outputs)) {
    check(bsm_save_output_npy(model, index, file.c_str()), "");
    bsm_tensor_info info;
    check(bsm_output_info(model, index, &info), "");
    if (!opt.quiet) std::printf("output %s -> %s\n", describe(info).c_str(), file.c_str());
  }
  if (opt.bench > 0) bench(model, opt);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    run(parse_args(argc, argv));
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "bitsmith-run: error: %s\n(bitsmith-run --help shows the usage)\n", e.message.c_str());
    return kExitUsage;
  } catch (const Failure& e) {
    std::fprintf(stderr, "bitsmith-run: error: %s\n", e.message.c_str());
    return kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bitsmith-run: error: %s\n", e.what());
    return kExitFailure;
  }
}
