#include "npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "dtype.h"
#include "error.h"

namespace bsm {

std::string read_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) fail(BSM_ERROR_IO, "cannot open " + path + ": " + std::strerror(errno));
  std::string bytes;
  char chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, file.get())) > 0) bytes.append(chunk, got);
  if (std::ferror(file.get())) fail(BSM_ERROR_IO, "cannot read " + path + ": " + std::strerror(errno));
  return bytes;
}

void write_file(const std::string& path, std::string_view bytes) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) fail(BSM_ERROR_IO, "cannot create " + path + ": " + std::strerror(errno));
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  int saved = errno;
  ok = (std::fclose(file) == 0) && ok;
  if (!ok) fail(BSM_ERROR_IO, "cannot write " + path + ": " + std::strerror(saved ? saved : errno));
}

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }.
// This reads exactly that shape of literal: string keys, and string / bool / int-tuple values.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  void parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip();
    expect('{');
    while (skip(), peek() != '}') {
      std::string key = quoted();
      skip();
      expect(':');
      skip();
      if (key == "descr") {
        *descr = quoted();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran_order = boolean();
        have_order = true;
      } else if (key == "shape") {
        *shape = tuple();
        have_shape = true;
      } else {
        error("unknown header key '" + key + "'");
      }
      skip();
      if (peek() == ',') ++pos_;
    }
    if (!have_descr || !have_order || !have_shape) error("header lacks descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(BSM_ERROR_ARTIFACT, source_ + " is not a valid .npy file: " + what);
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip() {
    while (peek() == ' ' || peek() == '\n' || peek() == '\t') ++pos_;
  }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "' in the header");
    ++pos_;
  }
  std::string quoted() {
    char quote = peek();
    if (quote != '\'' && quote != '"') error("expected a quoted string in the header");
    size_t end = text_.find(quote, ++pos_);
    if (end == std::string_view::npos) error("unterminated string in the header");
    std::string out(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    if (text_.substr(pos_, 4) == "True") return pos_ += 4, true;
    if (text_.substr(pos_, 5) == "False") return pos_ += 5, false;
    error("expected True or False in the header");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (skip(), peek() != ')') {
      if (peek() < '0' || peek() > '9') error("expected a dimension in the shape");
      int64_t dim = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (dim > (int64_t(1) << 50)) error("dimension too large");
        dim = dim * 10 + (text_[pos_++] - '0');
      }
      dims.push_back(dim);
      skip();
      if (peek() == ',') ++pos_;
    }
    ++pos_;
    return dims;
  }

  std::string_view text_;
  const std::string& source_;
  size_t pos_ = 0;
};

uint32_t read_le(std::string_view bytes, size_t offset, size_t width) {
  uint32_t value = 0;
  for (size_t i = 0; i < width; ++i) value |= uint32_t(uint8_t(bytes[offset + i])) << (8 * i);
  return value;
}

}  // namespace

NpyArray parse_npy(std::string_view bytes, const std::string& source) {
  auto malformed = [&](const std::string& what) { fail(BSM_ERROR_ARTIFACT, source + " is not a valid .npy file: " + what); };
  if (bytes.size() < kMagicLen + 4 || bytes.substr(0, kMagicLen) != std::string_view(kMagic, kMagicLen)) {
    malformed("it lacks the \\x93NUMPY magic");
  }
  int major = uint8_t(bytes[6]);
  if (major < 1 || major > 3) fail(BSM_ERROR_UNSUPPORTED, source + ": .npy format version " + std::to_string(major) + " is not supported");
  size_t len_width = major == 1 ? 2 : 4;
  size_t header_start = 8 + len_width;
  if (bytes.size() < header_start) malformed("truncated header");
  size_t header_len = read_le(bytes, 8, len_width);
  if (bytes.size() < header_start + header_len) malformed("truncated header");

  std::string descr;
  bool fortran_order = false;
  NpyArray array;
  HeaderParser(bytes.substr(header_start, header_len), source).parse(&descr, &fortran_order, &array.shape);
  const DType* dtype = dtype_by_npy(descr);
  if (dtype == nullptr) {
    fail(BSM_ERROR_UNSUPPORTED, source + ": .npy element type '" + descr +
                                    "' is not supported (little-endian " + known_dtype_names() + ")");
  }
  if (fortran_order) fail(BSM_ERROR_UNSUPPORTED, source + " is in Fortran order; save it C-contiguous (np.ascontiguousarray)");
  array.dtype = dtype->name;
  uint64_t expected = element_count(array.shape, source) * dtype->bytes();
  std::string_view data = bytes.substr(header_start + header_len);
  if (data.size() != expected) {
    malformed("it holds " + std::to_string(data.size()) + " data bytes, but " + describe(array.dtype, array.shape) +
              " needs " + std::to_string(expected));
  }
  array.data.assign(data.begin(), data.end());
  return array;
}

NpyArray read_npy(const std::string& path) { return parse_npy(read_file(path), path); }

std::string format_npy(const std::string& dtype, const std::vector<int64_t>& shape, const void* data,
                       size_t num_bytes) {
  const DType* type = dtype_by_name(dtype);
  if (type == nullptr || type->npy == nullptr) fail(BSM_ERROR_UNSUPPORTED, "cannot write " + dtype + " to .npy");
  if (element_count(shape, "array") * type->bytes() != num_bytes) {
    fail(BSM_ERROR_INTERNAL, "format_npy: " + std::to_string(num_bytes) + " bytes do not make " + describe(dtype, shape));
  }
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (5,) keeps its comma; (2, 3) does not end in one
  else if (shape.size() == 1) dims.resize(dims.size() - 1);
  std::string header = "{'descr': '" + std::string(type->npy) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Pad with spaces and a final newline so that the data starts on a 64-byte boundary.
  size_t total = kMagicLen + 4 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  out += char(header.size() & 0xFF);
  out += char(header.size() >> 8);
  out += header;
  out.append(static_cast<const char*>(data), num_bytes);
  return out;
}

void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t num_bytes) {
  write_file(path, format_npy(dtype, shape, data, num_bytes));
}

}  // namespace bsm
