// A small, strict JSON reader (RFC 8259) for manifest.json and safetensors headers.
//
// Written here rather than taken from a library so that the checks done before any artifact code
// is loaded depend on nothing but this runtime. Strict on purpose: duplicate object keys are an
// error (two readers could otherwise disagree on which value counts), nesting depth is bounded, and
// integers keep their exact int64 value.
#ifndef BITSMITH_RUNTIME_SRC_JSON_H_
#define BITSMITH_RUNTIME_SRC_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bsm {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Members = std::vector<std::pair<std::string, Json>>;

  Json() = default;
  static Json boolean(bool value);
  static Json number(double value, bool is_int, int64_t int_value);
  static Json string(std::string value);
  static Json array(std::vector<Json> items);
  static Json object(Members members);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_int() const { return type_ == Type::kNumber && is_int_; }  // written without '.', 'e'
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Accessors throw bsm::Error(BSM_ERROR_ARTIFACT) naming `what` when the type is wrong.
  bool as_bool(const std::string& what) const;
  int64_t as_int(const std::string& what) const;
  double as_double(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  const std::vector<Json>& as_array(const std::string& what) const;
  const Members& as_object(const std::string& what) const;

  // Member `key` of an object, or nullptr (also for non-objects).
  const Json* find(std::string_view key) const;
  // Member `key`, which must exist: throws naming `what` otherwise.
  const Json& at(std::string_view key, const std::string& what) const;

  static const char* type_name(Type type);

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  std::vector<Json> array_;
  Members members_;
};

// Parse a whole document; throws bsm::Error(BSM_ERROR_ARTIFACT) with "line L, column C: ..." on
// malformed input. `source` names the document in messages.
Json parse_json(std::string_view text, const std::string& source);

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_JSON_H_
