#include "json.h"

#include <charconv>
#include <set>

#include "error.h"

namespace bsm {

Json Json::boolean(bool value) {
  Json j;
  j.type_ = Type::kBool;
  j.bool_ = value;
  return j;
}

Json Json::number(double value, bool is_int, int64_t int_value) {
  Json j;
  j.type_ = Type::kNumber;
  j.double_ = value;
  j.is_int_ = is_int;
  j.int_ = int_value;
  return j;
}

Json Json::string(std::string value) {
  Json j;
  j.type_ = Type::kString;
  j.string_ = std::move(value);
  return j;
}

Json Json::array(std::vector<Json> items) {
  Json j;
  j.type_ = Type::kArray;
  j.array_ = std::move(items);
  return j;
}

Json Json::object(Members members) {
  Json j;
  j.type_ = Type::kObject;
  j.members_ = std::move(members);
  return j;
}

const char* Json::type_name(Type type) {
  switch (type) {
    case Type::kNull: return "null";
    case Type::kBool: return "a boolean";
    case Type::kNumber: return "a number";
    case Type::kString: return "a string";
    case Type::kArray: return "an array";
    case Type::kObject: return "an object";
  }
  return "?";
}

namespace {
[[noreturn]] void wrong_type(const std::string& what, const char* expected, Json::Type got) {
  fail(BSM_ERROR_ARTIFACT, what + " must be " + expected + ", not " + Json::type_name(got));
}
}  // namespace

bool Json::as_bool(const std::string& what) const {
  if (type_ != Type::kBool) wrong_type(what, "a boolean", type_);
  return bool_;
}

int64_t Json::as_int(const std::string& what) const {
  if (!is_int()) wrong_type(what, "an integer", type_);
  return int_;
}

double Json::as_double(const std::string& what) const {
  if (type_ != Type::kNumber) wrong_type(what, "a number", type_);
  return double_;
}

const std::string& Json::as_string(const std::string& what) const {
  if (type_ != Type::kString) wrong_type(what, "a string", type_);
  return string_;
}

const std::vector<Json>& Json::as_array(const std::string& what) const {
  if (type_ != Type::kArray) wrong_type(what, "an array", type_);
  return array_;
}

const Json::Members& Json::as_object(const std::string& what) const {
  if (type_ != Type::kObject) wrong_type(what, "an object", type_);
  return members_;
}

const Json* Json::find(std::string_view key) const {
  for (const auto& member : members_) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

const Json& Json::at(std::string_view key, const std::string& what) const {
  as_object(what);
  const Json* value = find(key);
  if (value == nullptr) fail(BSM_ERROR_ARTIFACT, what + " has no \"" + std::string(key) + "\" entry");
  return *value;
}

// ------------------------------------------------------------------------------------- parser
namespace {

constexpr int kMaxDepth = 64;

class Parser {
 public:
  Parser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  Json document() {
    skip_space();
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) error("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    fail(BSM_ERROR_ARTIFACT, source_ + " is not valid JSON: line " + std::to_string(line) + ", column " +
                                 std::to_string(column) + ": " + what);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void skip_space() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }

  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }

  void expect_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) error("unexpected character");
    pos_ += word.size();
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) error("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    switch (peek()) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Json::string(parse_string());
      case 't': expect_word("true"); return Json::boolean(true);
      case 'f': expect_word("false"); return Json::boolean(false);
      case 'n': expect_word("null"); return Json();
      default: break;
    }
    if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
    if (at_end()) error("unexpected end of text");
    error("unexpected character");
  }

  Json parse_object(int depth) {
    expect('{');
    Json::Members members;
    std::set<std::string> seen;
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return Json::object(std::move(members));
    }
    while (true) {
      skip_space();
      if (peek() != '"') error("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) error("duplicate key \"" + key + "\"");
      skip_space();
      expect(':');
      skip_space();
      members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      return Json::object(std::move(members));
    }
  }

  Json parse_array(int depth) {
    expect('[');
    std::vector<Json> items;
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return Json::array(std::move(items));
    }
    while (true) {
      skip_space();
      items.push_back(parse_value(depth + 1));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      return Json::array(std::move(items));
    }
  }

  // Number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  Json parse_number() {
    size_t start = pos_;
    bool is_int = true;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (isdigit(peek())) ++pos_;
    } else {
      error("malformed number");
    }
    if (peek() == '.') {
      is_int = false;
      ++pos_;
      if (!isdigit(peek())) error("malformed number: digits must follow '.'");
      while (isdigit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      is_int = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!isdigit(peek())) error("malformed number: digits must follow the exponent");
      while (isdigit(peek())) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    double value = 0;
    if (std::from_chars(first, last, value).ec != std::errc()) error("number out of range");
    int64_t int_value = 0;
    if (is_int && std::from_chars(first, last, int_value).ec != std::errc()) {
      is_int = false;  // an integer beyond int64: keep it as a double only
    }
    return Json::number(value, is_int, int_value);
  }

  static bool isdigit(char c) { return c >= '0' && c <= '9'; }

  unsigned parse_hex4() {
    if (pos_ + 4 > text_.size()) error("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_++];
      value <<= 4;
      if (c >= '0' && c <= '9') value |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') value |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') value |= unsigned(c - 'A' + 10);
      else error("bad hex digit in \\u escape");
    }
    return value;
  }

  // A \uXXXX escape (the "\u" already consumed), joining surrogate pairs, as UTF-8.
  void parse_unicode_escape(std::string* out) {
    unsigned code = parse_hex4();
    if (code >= 0xD800 && code <= 0xDBFF) {
      if (text_.substr(pos_, 2) != "\\u") error("unpaired UTF-16 surrogate");
      pos_ += 2;
      unsigned low = parse_hex4();
      if (low < 0xDC00 || low > 0xDFFF) error("unpaired UTF-16 surrogate");
      code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
    } else if (code >= 0xDC00 && code <= 0xDFFF) {
      error("unpaired UTF-16 surrogate");
    }
    if (code < 0x80) {
      out->push_back(char(code));
    } else if (code < 0x800) {
      out->push_back(char(0xC0 | (code >> 6)));
      out->push_back(char(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out->push_back(char(0xE0 | (code >> 12)));
      out->push_back(char(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(char(0x80 | (code & 0x3F)));
    } else {
      out->push_back(char(0xF0 | (code >> 18)));
      out->push_back(char(0x80 | ((code >> 12) & 0x3F)));
      out->push_back(char(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(char(0x80 | (code & 0x3F)));
    }
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (at_end()) error("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) error("control character in string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (at_end()) error("unterminated string");
      char escape = text_[pos_++];
      switch (escape) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': parse_unicode_escape(&out); break;
        default: --pos_; error("bad escape in string");
      }
    }
  }

  std::string_view text_;
  const std::string& source_;
  size_t pos_ = 0;
};

}  // namespace

Json parse_json(std::string_view text, const std::string& source) { return Parser(text, source).document(); }

}  // namespace bsm
