#include "artifact.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "error.h"
#include "json.h"
#include "npy.h"
#include "sha256.h"

namespace bsm {

std::string TensorSpec::describe() const { return bsm::describe(dtype->name, shape); }

std::string Manifest::path(const std::string& member) const {
  return root.empty() || root.back() == '/' ? root + member : root + "/" + member;
}

void check_member_name(const std::string& name, const std::string& manifest_path) {
  auto refuse = [&](const char* why) {
    fail(BSM_ERROR_VERIFICATION, manifest_path + " lists member '" + name + "', which " + why +
                                     "; refusing to load the artifact");
  };
  if (name.empty()) refuse("is empty");
  if (name.find('\0') != std::string::npos) refuse("contains a NUL character");
  if (name.front() == '/' || name.front() == '\\') refuse("is absolute");
  if (name.find('\\') != std::string::npos) refuse("contains a backslash");
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    if (name.compare(start, end - start, "..") == 0) refuse("escapes the artifact directory ('..')");
    start = end + 1;
  }
}

namespace {

std::vector<TensorSpec> parse_specs(const Json& list, const std::string& what) {
  std::vector<TensorSpec> specs;
  const auto& items = list.as_array(what);
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string item = what + "[" + std::to_string(i) + "]";
    TensorSpec spec;
    spec.name = items[i].at("name", item).as_string(item + " name");
    const std::string& dtype = items[i].at("dtype", item).as_string(item + " dtype");
    spec.dtype = dtype_by_name(dtype);
    if (spec.dtype == nullptr) {
      fail(BSM_ERROR_UNSUPPORTED, item + " '" + spec.name + "' has dtype '" + dtype +
                                      "', which this runtime does not know (" + known_dtype_names() + ")");
    }
    for (const Json& dim : items[i].at("shape", item).as_array(item + " shape")) {
      spec.shape.push_back(dim.as_int(item + " shape entry"));
    }
    spec.num_bytes = element_count(spec.shape, item) * spec.dtype->bytes();
    specs.push_back(std::move(spec));
  }
  return specs;
}

void check_format(const Json& root, const std::string& where) {
  const Json* format = root.find("format");
  const Json* version = root.find("version");
  bool ok = format && format->is_string() && format->as_string("format") == kArtifactFormat && version &&
            version->is_int() && version->as_int("version") == BSM_ARTIFACT_VERSION;
  if (!ok) {
    fail(BSM_ERROR_ARTIFACT, where + " is not a bitsmith artifact of version " + std::to_string(BSM_ARTIFACT_VERSION) +
                                 " (manifest format/version differ); recompile it with a matching bitsmith");
  }
}

bool is_hex_digest(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

Manifest read_manifest(const std::string& root) {
  struct stat info;
  if (::stat(root.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    fail(BSM_ERROR_ARTIFACT, root + " is not an artifact directory (it does not exist or is a file)");
  }
  Manifest m;
  m.root = root;
  const std::string where = m.path(kManifestName);
  if (::stat(where.c_str(), &info) != 0) {
    fail(BSM_ERROR_ARTIFACT, root + " has no " + kManifestName + ": not a bitsmith artifact, or incomplete");
  }
  Json json = parse_json(read_file(where), where);
  json.as_object(where);
  check_format(json, root);
  m.library = json.at("library", where).as_string(where + " library");
  m.weights = json.at("weights", where).as_string(where + " weights");
  const Json* device = json.find("device");
  m.device = device ? device->as_string(where + " device") : "cpu";
  for (const Json& p : json.at("params", where).as_array(where + " params")) m.params.push_back(p.as_string(where + " params entry"));
  m.inputs = parse_specs(json.at("inputs", where), where + " inputs");
  m.outputs = parse_specs(json.at("outputs", where), where + " outputs");
  for (const auto& [name, digest] : json.at("files", where).as_object(where + " files")) {
    check_member_name(name, where);
    const std::string& hex = digest.as_string(where + " files['" + name + "']");
    if (!is_hex_digest(hex)) fail(BSM_ERROR_ARTIFACT, where + " files['" + name + "'] is not a SHA-256 hex digest");
    m.files.emplace(name, hex);
  }
  for (const std::string* required : {&m.library, &m.weights}) {
    check_member_name(*required, where);
    if (m.files.count(*required) == 0) {
      fail(BSM_ERROR_VERIFICATION, where + " does not list '" + *required + "' among its hashed files; refusing to load it");
    }
  }
  return m;
}

void verify_files(const Manifest& m) {
  for (const auto& [name, expected] : m.files) {  // std::map: sorted, like the Python reader
    const std::string member = m.path(name);
    struct stat info;
    if (::stat(member.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
      fail(BSM_ERROR_VERIFICATION, "artifact " + m.root + " is missing " + name + "; recompile it");
    }
    if (sha256_file_hex(member) != expected) {
      fail(BSM_ERROR_VERIFICATION, "artifact file " + member +
                                       " was modified (SHA-256 mismatch); refusing to load it. "
                                       "Recompile, or restore the original file.");
    }
  }
}

Manifest read_verified_manifest(const std::string& root) {
  Manifest m = read_manifest(root);
  verify_files(m);
  return m;
}

}  // namespace bsm
