// Unit tests of the runtime's TVM-free parts: SHA-256, the JSON reader, .npy and safetensors I/O,
// and the manifest checks done before any artifact code is loaded.
//
//   bitsmith_unit_tests GROUP     (GROUP: sha256, json, npy, safetensors, manifest; ctest runs each)
//
// A deliberately tiny harness: CHECK records a failure with its line and carries on, so one run
// reports every broken expectation of a group.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "artifact.h"
#include "error.h"
#include "json.h"
#include "npy.h"
#include "safetensors.h"
#include "sha256.h"

namespace {

int g_failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

#define CHECK_EQ(a, b)                                                                              \
  do {                                                                                              \
    auto _a = (a);                                                                                  \
    auto _b = (b);                                                                                  \
    if (!(_a == _b)) {                                                                              \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s\n", __FILE__, __LINE__, #a, #b);       \
      ++g_failures;                                                                                 \
    }                                                                                               \
  } while (0)

// `body` must throw bsm::Error with `status` and a message containing `needle`.
void expect_error(int line, bsm_status status, const std::string& needle, const std::function<void()>& body) {
  try {
    body();
    std::fprintf(stderr, "%s:%d: expected an error containing \"%s\", got none\n", __FILE__, line, needle.c_str());
    ++g_failures;
  } catch (const bsm::Error& e) {
    if (e.status() != status || std::string(e.what()).find(needle) == std::string::npos) {
      std::fprintf(stderr, "%s:%d: expected status %d with \"%s\", got status %d: %s\n", __FILE__, line, int(status),
                   needle.c_str(), int(e.status()), e.what());
      ++g_failures;
    }
  }
}
#define EXPECT_ERROR(status, needle, ...) expect_error(__LINE__, status, needle, [&] { __VA_ARGS__; })

// A fresh temporary directory, removed (with its files) when the object goes away.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/bsm-unit-XXXXXX";
    if (mkdtemp(pattern) == nullptr) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ------------------------------------------------------------------------------------ sha256
void test_sha256() {
  // FIPS 180-4 / NIST example vectors.
  CHECK_EQ(bsm::sha256_hex(""), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_EQ(bsm::sha256_hex("abc"), std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK_EQ(bsm::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
           std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  CHECK_EQ(bsm::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
           std::string("cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"));
  CHECK_EQ(bsm::sha256_hex(std::string(1000000, 'a')),
           std::string("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
  // Padding edge cases: lengths around the 56- and 64-byte boundaries, fed in uneven pieces.
  for (size_t length : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u, 128u, 1000u}) {
    std::string data;
    for (size_t i = 0; i < length; ++i) data.push_back(char('a' + i % 26));
    for (size_t piece : {1u, 3u, 63u, 64u, 65u}) {
      bsm::Sha256 hash;
      for (size_t at = 0; at < length; at += piece) hash.update(data.data() + at, std::min(piece, length - at));
      CHECK_EQ(hash.hex_finish(), bsm::sha256_hex(data));
    }
  }
  CHECK_EQ(bsm::sha256_hex(std::string(56, 'a')),
           std::string("b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"));
  CHECK_EQ(bsm::sha256_hex(std::string(64, 'a')),
           std::string("ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"));
  TempDir dir;
  std::string big(3 << 20, 'x');  // several read chunks
  bsm::write_file(dir.file("big"), big);
  CHECK_EQ(bsm::sha256_file_hex(dir.file("big")), bsm::sha256_hex(big));
  EXPECT_ERROR(BSM_ERROR_IO, "cannot open", bsm::sha256_file_hex(dir.file("absent")));
}

// -------------------------------------------------------------------------------------- json
void test_json() {
  using bsm::Json;
  Json doc = bsm::parse_json(
      R"({"a": 1, "b": [true, false, null], "c": {"d": "x\"y\\z\/\n\t"}, "e": -12.5e1, "f": 9223372036854775807,
          "g": 99999999999999999999, "h": 0, "i": "caf\u00e9 \ud83d\ude00", "j": []})",
      "test");
  CHECK(doc.is_object());
  CHECK_EQ(doc.at("a", "doc").as_int("a"), int64_t(1));
  CHECK_EQ(doc.at("b", "doc").as_array("b").size(), size_t(3));
  CHECK(doc.at("b", "doc").as_array("b")[0].as_bool("b0"));
  CHECK(doc.at("b", "doc").as_array("b")[2].is_null());
  CHECK_EQ(doc.at("c", "doc").at("d", "c").as_string("d"), std::string("x\"y\\z/\n\t"));
  CHECK(!doc.at("e", "doc").is_int());
  CHECK_EQ(doc.at("e", "doc").as_double("e"), -125.0);
  CHECK_EQ(doc.at("f", "doc").as_int("f"), int64_t(9223372036854775807LL));
  CHECK(!doc.at("g", "doc").is_int());  // beyond int64: a double only
  CHECK_EQ(doc.at("h", "doc").as_int("h"), int64_t(0));
  CHECK_EQ(doc.at("i", "doc").as_string("i"), std::string("caf\xc3\xa9 \xf0\x9f\x98\x80"));
  CHECK(doc.at("j", "doc").as_array("j").empty());
  CHECK(doc.find("zz") == nullptr);
  CHECK_EQ(bsm::parse_json("  [1,2]\n", "t").as_array("t").size(), size_t(2));
  CHECK_EQ(bsm::parse_json("\"s\"", "t").as_string("t"), std::string("s"));

  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "has no \"zz\"", doc.at("zz", "doc"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "a must be a string, not a number", doc.at("a", "doc").as_string("a"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "duplicate key \"a\"", bsm::parse_json(R"({"a": 1, "a": 2})", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "line 2, column 1", bsm::parse_json("{\"a\": 1,\n}", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "unexpected text after", bsm::parse_json("{} x", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "unterminated string", bsm::parse_json("\"abc", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "unexpected end", bsm::parse_json("", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "unexpected text after", bsm::parse_json("01", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "digits must follow", bsm::parse_json("1.", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "control character", bsm::parse_json("\"a\nb\"", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "bad escape", bsm::parse_json(R"("\x")", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "unpaired UTF-16 surrogate", bsm::parse_json(R"("\ud83d")", "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "nested deeper", bsm::parse_json(std::string(100, '[') + std::string(100, ']'), "t"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "manifest.json is not valid JSON", bsm::parse_json("tru", "manifest.json"));
}

// --------------------------------------------------------------------------------------- npy
template <typename T>
void npy_round_trip(const std::string& dtype, const std::vector<int64_t>& shape, const std::vector<T>& values) {
  std::string bytes = bsm::format_npy(dtype, shape, values.data(), values.size() * sizeof(T));
  size_t header_len = size_t(uint8_t(bytes[8])) | size_t(uint8_t(bytes[9])) << 8;
  CHECK_EQ((10 + header_len) % 64, size_t(0));  // data 64-byte aligned, as numpy writes it
  CHECK_EQ(bytes[10 + header_len - 1], '\n');
  bsm::NpyArray back = bsm::parse_npy(bytes, "t.npy");
  CHECK_EQ(back.dtype, dtype);
  CHECK(back.shape == shape);
  CHECK_EQ(back.data.size(), values.size() * sizeof(T));
  CHECK(std::memcmp(back.data.data(), values.data(), back.data.size()) == 0);
}

// The bytes numpy would write for `header` followed by `data` (format 1.0).
std::string numpy_file(std::string header, const std::string& data, int version = 1) {
  size_t prefix = version == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = std::string("\x93NUMPY", 6) + char(version) + '\0';
  size_t n = header.size();
  out += char(n & 0xFF);
  out += char((n >> 8) & 0xFF);
  if (version != 1) out += std::string(2, '\0');
  return out + header + data;
}

void test_npy() {
  npy_round_trip<float>("float32", {1, 3, 2, 2}, {0.5f, -1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1e30f});
  npy_round_trip<int64_t>("int64", {2, 3}, {1, -2, 3, int64_t(1) << 40, 5, -6});
  npy_round_trip<int32_t>("int32", {5}, {1, 2, 3, 4, -5});
  npy_round_trip<int8_t>("int8", {2, 2}, {-128, 127, 0, 1});
  npy_round_trip<uint8_t>("uint8", {}, {255});  // a 0-d array
  npy_round_trip<float>("float32", {0, 4}, {});
  CHECK(bsm::format_npy("int32", {5}, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20).find("'shape': (5,)") != std::string::npos);

  std::string four(16, '\0');
  bsm::NpyArray a = bsm::parse_npy(numpy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", four), "a.npy");
  CHECK_EQ(a.dtype, std::string("int32"));
  CHECK((a.shape == std::vector<int64_t>{2, 2}));
  bsm::NpyArray v2 = bsm::parse_npy(numpy_file("{'descr': '|u1', 'fortran_order': False, 'shape': (16,), }", four, 2), "v2.npy");
  CHECK_EQ(v2.dtype, std::string("uint8"));
  // Key order does not matter.
  bsm::NpyArray b = bsm::parse_npy(numpy_file("{'shape': (4,), 'fortran_order': False, 'descr': '<f4'}", four), "b.npy");
  CHECK_EQ(b.dtype, std::string("float32"));

  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "lacks the \\x93NUMPY magic", bsm::parse_npy("PK\x03\x04 not npy", "z.npy"));
  EXPECT_ERROR(BSM_ERROR_UNSUPPORTED, "Fortran order",
               bsm::parse_npy(numpy_file("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 2), }", four), "f.npy"));
  EXPECT_ERROR(BSM_ERROR_UNSUPPORTED, "'>f4' is not supported",
               bsm::parse_npy(numpy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", four), "be.npy"));
  EXPECT_ERROR(BSM_ERROR_UNSUPPORTED, "'<c8' is not supported",
               bsm::parse_npy(numpy_file("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", four), "c.npy"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "holds 16 data bytes, but float32[5] needs 20",
               bsm::parse_npy(numpy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", four), "short.npy"));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "truncated header", bsm::parse_npy(std::string("\x93NUMPY\x01\x00\x50\x00{'de", 14), "t.npy"));

  TempDir dir;
  std::vector<float> values = {1.5f, 2.5f};
  bsm::write_npy(dir.file("x.npy"), "float32", {2}, values.data(), 8);
  bsm::NpyArray x = bsm::read_npy(dir.file("x.npy"));
  CHECK(std::memcmp(x.data.data(), values.data(), 8) == 0);
  EXPECT_ERROR(BSM_ERROR_IO, "cannot open", bsm::read_npy(dir.file("absent.npy")));
  EXPECT_ERROR(BSM_ERROR_IO, "cannot create", bsm::write_npy(dir.file("no/such/dir.npy"), "float32", {2}, values.data(), 8));
}

// ------------------------------------------------------------------------------- safetensors
std::string safetensors_file(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(char((uint64_t(header.size()) >> (8 * i)) & 0xFF));
  return out + header + data;
}

void test_safetensors() {
  TempDir dir;
  float w[6] = {1, 2, 3, 4, 5, 6};
  int8_t q[4] = {-1, 2, -3, 4};
  std::string data(reinterpret_cast<const char*>(w), sizeof w);
  data.append(reinterpret_cast<const char*>(q), sizeof q);
  std::string header = R"({"__metadata__": {"format": "np"}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                          "q": {"dtype": "I8", "shape": [4], "data_offsets": [24, 28]}})";
  bsm::write_file(dir.file("ok.safetensors"), safetensors_file(header, data));
  bsm::SafetensorsFile file(dir.file("ok.safetensors"));
  CHECK_EQ(file.entries().size(), size_t(2));
  const bsm::SafetensorsEntry& we = file.entry("w");
  CHECK_EQ(std::string(we.dtype->name), std::string("float32"));
  CHECK((we.shape == std::vector<int64_t>{2, 3}));
  float wback[6];
  file.read(we, wback);
  CHECK(std::memcmp(wback, w, sizeof w) == 0);
  int8_t qback[4];
  file.read(file.entry("q"), qback);
  CHECK(std::memcmp(qback, q, sizeof q) == 0);
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "has no tensor 'nope'", file.entry("nope"));

  auto header_error = [&](const std::string& h, uint64_t size) { bsm::parse_safetensors_header(h, size, "w.safetensors"); };
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "fall outside the 10-byte data section",
               header_error(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "holds 12 bytes but float32[4] needs 16",
               header_error(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", 16));
  EXPECT_ERROR(BSM_ERROR_UNSUPPORTED, "dtype C64",
               header_error(R"({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}})", 16));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "has no \"shape\"", header_error(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 16));
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "data_offsets must be [begin, end]",
               header_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 16));

  std::string huge = safetensors_file(header, data);
  huge[5] = '\x7f';  // header length far beyond the file
  bsm::write_file(dir.file("huge.safetensors"), huge);
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "does not fit", bsm::SafetensorsFile(dir.file("huge.safetensors")));
  bsm::write_file(dir.file("tiny.safetensors"), "abc");
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "shorter than 8 bytes", bsm::SafetensorsFile(dir.file("tiny.safetensors")));
  EXPECT_ERROR(BSM_ERROR_IO, "cannot open", bsm::SafetensorsFile(dir.file("absent.safetensors")));
}

// ---------------------------------------------------------------------------------- manifest
struct FakeArtifact {
  TempDir dir;
  std::map<std::string, std::string> files{{"model.so", "not really a library"}, {"weights.safetensors", "w"}, {"sub/graph.json", "{}"}};

  void write(const std::string& files_json_override = "", const std::string& extra = "") {
    ::mkdir(dir.file("sub").c_str(), 0755);
    std::string listing;
    for (const auto& [name, content] : files) {
      bsm::write_file(dir.file(name), content);
      listing += (listing.empty() ? "" : ", ") + ("\"" + name + "\": \"" + bsm::sha256_hex(content) + "\"");
    }
    std::string manifest = R"({"format": "bitsmith-artifact", "version": 1, "library": "model.so",
        "weights": "weights.safetensors", "device": "cpu", "params": ["w"],
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 24, 24]}],
        "outputs": [{"name": "y", "dtype": "int64", "shape": [1]}],
        "files": {)" + (files_json_override.empty() ? listing : files_json_override) + "}" + extra + "}";
    bsm::write_file(dir.file("manifest.json"), manifest);
  }
};

void test_manifest() {
  {
    FakeArtifact art;
    art.write();
    bsm::Manifest m = bsm::read_verified_manifest(art.dir.path());
    CHECK_EQ(m.library, std::string("model.so"));
    CHECK_EQ(m.inputs.size(), size_t(1));
    CHECK_EQ(m.inputs[0].describe(), std::string("float32[1,3,24,24]"));
    CHECK_EQ(m.inputs[0].num_bytes, size_t(4 * 3 * 24 * 24));
    CHECK_EQ(m.outputs[0].num_bytes, size_t(8));
    CHECK_EQ(m.files.size(), size_t(3));
    CHECK_EQ(m.path("model.so"), art.dir.file("model.so"));

    bsm::write_file(art.dir.file("weights.safetensors"), "W");  // tampered after writing the manifest
    EXPECT_ERROR(BSM_ERROR_VERIFICATION, "weights.safetensors was modified (SHA-256 mismatch)",
                 bsm::read_verified_manifest(art.dir.path()));
    std::remove(art.dir.file("sub/graph.json").c_str());
    EXPECT_ERROR(BSM_ERROR_VERIFICATION, "is missing sub/graph.json", bsm::read_verified_manifest(art.dir.path()));
  }
  const std::string digest = "\"" + bsm::sha256_hex("x") + "\"";
  for (const std::string& bad : {"../evil.so", "/etc/passwd", "sub/../../x", "..", "a\\\\b", ""}) {
    FakeArtifact art;
    art.write("\"model.so\": " + digest + ", \"weights.safetensors\": " + digest + ", \"" + bad + "\": " + digest);
    EXPECT_ERROR(BSM_ERROR_VERIFICATION, "refusing to load", bsm::read_manifest(art.dir.path()));
  }
  {
    FakeArtifact art;  // "..." and "a..b" are ordinary names, not parent references
    bsm::check_member_name("...", "m");
    bsm::check_member_name("a..b/c", "m");
    art.write("\"weights.safetensors\": " + digest);
    EXPECT_ERROR(BSM_ERROR_VERIFICATION, "does not list 'model.so'", bsm::read_manifest(art.dir.path()));
  }
  {
    FakeArtifact art;
    art.write("\"model.so\": \"abc\", \"weights.safetensors\": " + digest);
    EXPECT_ERROR(BSM_ERROR_ARTIFACT, "is not a SHA-256 hex digest", bsm::read_manifest(art.dir.path()));
  }
  {
    FakeArtifact art;
    art.write("", ", \"version\": 2");  // duplicate key: refused by the JSON reader itself
    EXPECT_ERROR(BSM_ERROR_ARTIFACT, "duplicate key \"version\"", bsm::read_manifest(art.dir.path()));
    bsm::write_file(art.dir.file("manifest.json"), R"({"format": "bitsmith-artifact", "version": 2})");
    EXPECT_ERROR(BSM_ERROR_ARTIFACT, "not a bitsmith artifact of version 1", bsm::read_manifest(art.dir.path()));
    bsm::write_file(art.dir.file("manifest.json"), "{\"format\": ");
    EXPECT_ERROR(BSM_ERROR_ARTIFACT, "manifest.json is not valid JSON", bsm::read_manifest(art.dir.path()));
    std::remove(art.dir.file("manifest.json").c_str());
    EXPECT_ERROR(BSM_ERROR_ARTIFACT, "has no manifest.json", bsm::read_manifest(art.dir.path()));
  }
  EXPECT_ERROR(BSM_ERROR_ARTIFACT, "is not an artifact directory", bsm::read_manifest("/nonexistent/bitsmith"));
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, void (*)()> groups = {
      {"sha256", test_sha256}, {"json", test_json}, {"npy", test_npy},
      {"safetensors", test_safetensors}, {"manifest", test_manifest}};
  std::vector<std::string> chosen(argv + 1, argv + argc);
  if (chosen.empty()) {
    for (const auto& group : groups) chosen.push_back(group.first);
  }
  for (const std::string& name : chosen) {
    auto it = groups.find(name);
    if (it == groups.end()) {
      std::fprintf(stderr, "unknown test group '%s'\n", name.c_str());
      return 2;
    }
    try {
      it->second();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "group %s: unexpected exception: %s\n", name.c_str(), e.what());
      ++g_failures;
    }
  }
  std::printf("%d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
