#include "safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "error.h"
#include "json.h"

namespace bsm {
namespace {

// The format's own reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_file(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) fail(BSM_ERROR_IO, "cannot open " + path + ": " + std::strerror(errno));
  return file;
}

void read_at(FILE* file, uint64_t offset, void* dst, uint64_t size, const std::string& path) {
  if (fseeko(file, off_t(offset), SEEK_SET) != 0 || std::fread(dst, 1, size, file) != size) {
    fail(BSM_ERROR_IO, "cannot read " + std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                           " of " + path + (std::feof(file) ? ": the file is truncated" : ""));
  }
}

SafetensorsEntry parse_entry(const std::string& name, const Json& spec, uint64_t data_size, const std::string& source) {
  const std::string what = source + " tensor '" + name + "'";
  SafetensorsEntry entry;
  const std::string& code = spec.at("dtype", what).as_string(what + " dtype");
  entry.dtype = dtype_by_safetensors(code);
  if (entry.dtype == nullptr) fail(BSM_ERROR_UNSUPPORTED, what + " has dtype " + code + ", which this runtime does not know");
  for (const Json& dim : spec.at("shape", what).as_array(what + " shape")) entry.shape.push_back(dim.as_int(what + " shape entry"));
  const auto& offsets = spec.at("data_offsets", what).as_array(what + " data_offsets");
  if (offsets.size() != 2) fail(BSM_ERROR_ARTIFACT, what + " data_offsets must be [begin, end]");
  int64_t begin = offsets[0].as_int(what + " data_offsets"), end = offsets[1].as_int(what + " data_offsets");
  if (begin < 0 || end < begin || uint64_t(end) > data_size) {
    fail(BSM_ERROR_ARTIFACT, what + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                 "] fall outside the " + std::to_string(data_size) + "-byte data section");
  }
  entry.begin = uint64_t(begin);
  entry.end = uint64_t(end);
  uint64_t expected = element_count(entry.shape, what) * entry.dtype->bytes();
  if (entry.num_bytes() != expected) {
    fail(BSM_ERROR_ARTIFACT, what + " holds " + std::to_string(entry.num_bytes()) + " bytes but " +
                                 describe(entry.dtype->name, entry.shape) + " needs " + std::to_string(expected));
  }
  return entry;
}

}  // namespace

std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view header, uint64_t data_size,
                                                                 const std::string& source) {
  Json root = parse_json(header, source + " header");
  std::map<std::string, SafetensorsEntry> entries;
  for (const auto& [name, spec] : root.as_object(source + " header")) {
    if (name == "__metadata__") continue;  // free-form strings; nothing here depends on them
    entries.emplace(name, parse_entry(name, spec, data_size, source));
  }
  return entries;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), file_(open_file(path)) {
  FILE* file = file_.get();
  if (fseeko(file, 0, SEEK_END) != 0) fail(BSM_ERROR_IO, "cannot seek in " + path);
  uint64_t file_size = uint64_t(ftello(file));
  unsigned char length_bytes[8];
  if (file_size < 8) fail(BSM_ERROR_ARTIFACT, path + " is not a safetensors file: shorter than 8 bytes");
  read_at(file, 0, length_bytes, 8, path);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(length_bytes[i]) << (8 * i);
  if (header_len > kMaxHeaderBytes || 8 + header_len > file_size) {
    fail(BSM_ERROR_ARTIFACT, path + " is not a safetensors file: header length " + std::to_string(header_len) +
                                 " does not fit a " + std::to_string(file_size) + "-byte file");
  }
  std::string header(header_len, '\0');
  read_at(file, 8, header.data(), header_len, path);
  data_start_ = 8 + header_len;
  entries_ = parse_safetensors_header(header, file_size - data_start_, path);
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(BSM_ERROR_ARTIFACT, path_ + " has no tensor '" + name + "'");
  return it->second;
}

void SafetensorsFile::read(const SafetensorsEntry& entry, void* dst) {
  read_at(file_.get(), data_start_ + entry.begin, dst, entry.num_bytes(), path_);
}

}  // namespace bsm
