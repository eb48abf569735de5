// SHA-256 (FIPS 180-4), streaming. Written here so that verifying an artifact needs no crypto
// library: the runtime checks every file's digest before it loads any code from the artifact.
#ifndef BITSMITH_RUNTIME_SRC_SHA256_H_
#define BITSMITH_RUNTIME_SRC_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace bsm {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  // The digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> finish();
  // finish() as 64 lower-case hex digits.
  std::string hex_finish();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hex digest of a byte string.
std::string sha256_hex(const std::string& data);

// Hex digest of a file's contents; throws bsm::Error(BSM_ERROR_IO) if it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_SHA256_H_
