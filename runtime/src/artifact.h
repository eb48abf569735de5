// The artifact directory: reading manifest.json and verifying the files it lists.
//
// Nothing here loads code. Model (model.h) calls read_verified_manifest() first and touches the
// library and the weights only after every listed file has passed its SHA-256 check, mirroring
// bitsmith.artifact.read_verified_manifest on the Python side.
#ifndef BITSMITH_RUNTIME_SRC_ARTIFACT_H_
#define BITSMITH_RUNTIME_SRC_ARTIFACT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dtype.h"

namespace bsm {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kArtifactFormat = "bitsmith-artifact";

struct TensorSpec {
  std::string name;
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  size_t num_bytes = 0;
  std::string describe() const;  // "float32[1,3,24,24]"
};

struct Manifest {
  std::string root;                          // the artifact directory, as given
  std::string library;                       // member names (relative to root)
  std::string weights;
  std::string device;                        // "cpu"
  std::vector<std::string> params;           // parameter names in call order
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::map<std::string, std::string> files;  // member name -> expected SHA-256 (hex)

  std::string path(const std::string& member) const;  // root/member
};

// Refuse member names that are empty, absolute, or step outside the directory ("..").
void check_member_name(const std::string& name, const std::string& manifest_path);

// Parse and structurally validate root/manifest.json (no file is hashed).
Manifest read_manifest(const std::string& root);

// Check that every listed file exists and has its recorded SHA-256 (BSM_ERROR_VERIFICATION
// naming the file otherwise).
void verify_files(const Manifest& manifest);

// read_manifest + verify_files.
Manifest read_verified_manifest(const std::string& root);

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_ARTIFACT_H_
