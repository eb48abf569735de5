#include "dtype.h"

#include <limits>

#include "error.h"

namespace bsm {
namespace {

// Every type the readers know. Byte-sized npy codes carry '|' (numpy's "not applicable" order).
const DType kTypes[] = {
    {"float32", {kDLFloat, 32, 1}, "<f4", "F32"},
    {"float64", {kDLFloat, 64, 1}, "<f8", "F64"},
    {"float16", {kDLFloat, 16, 1}, "<f2", "F16"},
    {"bfloat16", {kDLBfloat, 16, 1}, nullptr, "BF16"},
    {"int8", {kDLInt, 8, 1}, "|i1", "I8"},
    {"int16", {kDLInt, 16, 1}, "<i2", "I16"},
    {"int32", {kDLInt, 32, 1}, "<i4", "I32"},
    {"int64", {kDLInt, 64, 1}, "<i8", "I64"},
    {"uint8", {kDLUInt, 8, 1}, "|u1", "U8"},
    {"uint16", {kDLUInt, 16, 1}, "<u2", "U16"},
    {"uint32", {kDLUInt, 32, 1}, "<u4", "U32"},
    {"uint64", {kDLUInt, 64, 1}, "<u8", "U64"},
    {"bool", {kDLBool, 8, 1}, "|b1", "BOOL"},
    {"float8_e4m3fn", {kDLFloat8_e4m3fn, 8, 1}, nullptr, "F8_E4M3"},
    {"float8_e5m2", {kDLFloat8_e5m2, 8, 1}, nullptr, "F8_E5M2"},
};

}  // namespace

const DType* dtype_by_name(const std::string& name) {
  for (const DType& t : kTypes) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

const DType* dtype_by_npy(const std::string& descr) {
  if (descr.size() < 2) return nullptr;
  char order = descr[0];
  if (order != '<' && order != '|' && order != '=') return nullptr;  // '>' is big-endian: refused
  std::string body = descr.substr(1);
  for (const DType& t : kTypes) {
    if (t.npy != nullptr && body == t.npy + 1) return &t;
  }
  return nullptr;
}

const DType* dtype_by_safetensors(const std::string& code) {
  for (const DType& t : kTypes) {
    if (code == t.safetensors) return &t;
  }
  return nullptr;
}

const DType* dtype_by_dl(DLDataType dl) {
  for (const DType& t : kTypes) {
    if (t.dl.code == dl.code && t.dl.bits == dl.bits && t.dl.lanes == dl.lanes) return &t;
  }
  return nullptr;
}

std::string known_dtype_names() {
  std::string out;
  for (const DType& t : kTypes) out += (out.empty() ? "" : ", ") + std::string(t.name);
  return out;
}

uint64_t element_count(const std::vector<int64_t>& shape, const std::string& what) {
  uint64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) fail(BSM_ERROR_ARTIFACT, what + " has a negative dimension");
    if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / 64 / uint64_t(dim)) {
      fail(BSM_ERROR_ARTIFACT, what + " is impossibly large");
    }
    count *= uint64_t(dim);
  }
  return count;
}

std::string describe(const std::string& dtype, const std::vector<int64_t>& shape) {
  std::string out = dtype + "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace bsm
