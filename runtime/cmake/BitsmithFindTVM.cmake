# Locate the TVM runtime pieces the bitsmith runtime needs, and define two imported targets:
#
#   bitsmith::tvm_ffi      libtvm_ffi.so     (+ the tvm_ffi and dlpack headers)
#   bitsmith::tvm_runtime  libtvm_runtime.so (the Relax VM; nothing references its symbols at link
#                                             time, so consumers link it with --no-as-needed)
#
# Inputs (cache variables): TVM_FFI_INCLUDE_DIR, TVM_RUNTIME_LIBRARY, TVM_FFI_LIBRARY. Any left
# unset are found in the Python packages of BITSMITH_PYTHON without importing them (importing tvm
# would load its libraries and take seconds).

function(_bitsmith_package_dir package out_var)
  execute_process(
    COMMAND "${BITSMITH_PYTHON}" -c
            "import importlib.util as u; s = u.find_spec('${package}'); print(s.submodule_search_locations[0] if s else '')"
    OUTPUT_VARIABLE dir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
  if(NOT rc EQUAL 0 OR dir STREQUAL "")
    set(dir "")
  endif()
  set(${out_var} "${dir}" PARENT_SCOPE)
endfunction()

if(NOT TVM_FFI_INCLUDE_DIR OR NOT TVM_RUNTIME_LIBRARY OR NOT TVM_FFI_LIBRARY)
  if(NOT EXISTS "${BITSMITH_PYTHON}")
    message(FATAL_ERROR "BITSMITH_PYTHON=${BITSMITH_PYTHON} does not exist. Run `make setup` to create the "
                        "virtual environment, pass -DBITSMITH_PYTHON=/path/to/python, or set "
                        "TVM_FFI_INCLUDE_DIR, TVM_RUNTIME_LIBRARY and TVM_FFI_LIBRARY.")
  endif()
  _bitsmith_package_dir(tvm _tvm_dir)
  _bitsmith_package_dir(tvm_ffi _tvm_ffi_dir)
  if(NOT _tvm_dir OR NOT _tvm_ffi_dir)
    message(FATAL_ERROR "${BITSMITH_PYTHON} has no `tvm` and `tvm_ffi` packages "
                        "(pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1)")
  endif()
endif()

find_path(TVM_FFI_INCLUDE_DIR tvm/ffi/function.h HINTS "${_tvm_ffi_dir}/include" NO_DEFAULT_PATH
          DOC "Directory holding tvm/ffi/*.h and dlpack/dlpack.h")
find_library(TVM_RUNTIME_LIBRARY tvm_runtime HINTS "${_tvm_dir}/lib" NO_DEFAULT_PATH DOC "libtvm_runtime.so")
find_library(TVM_FFI_LIBRARY tvm_ffi HINTS "${_tvm_ffi_dir}/lib" NO_DEFAULT_PATH DOC "libtvm_ffi.so")
foreach(var TVM_FFI_INCLUDE_DIR TVM_RUNTIME_LIBRARY TVM_FFI_LIBRARY)
  if(NOT ${var})
    message(FATAL_ERROR "bitsmith runtime: ${var} not found (looked in the tvm/tvm_ffi packages of ${BITSMITH_PYTHON})")
  endif()
endforeach()
message(STATUS "bitsmith runtime: tvm_ffi headers ${TVM_FFI_INCLUDE_DIR}")
message(STATUS "bitsmith runtime: ${TVM_RUNTIME_LIBRARY}, ${TVM_FFI_LIBRARY}")

add_library(bitsmith::tvm_ffi SHARED IMPORTED GLOBAL)
set_target_properties(bitsmith::tvm_ffi PROPERTIES IMPORTED_LOCATION "${TVM_FFI_LIBRARY}")
add_library(bitsmith::tvm_runtime SHARED IMPORTED GLOBAL)
set_target_properties(bitsmith::tvm_runtime PROPERTIES IMPORTED_LOCATION "${TVM_RUNTIME_LIBRARY}")
# The headers are needed only to compile the runtime itself, not by users of the C API.
add_library(bitsmith_tvm_headers INTERFACE)
target_include_directories(bitsmith_tvm_headers SYSTEM INTERFACE "${TVM_FFI_INCLUDE_DIR}")
