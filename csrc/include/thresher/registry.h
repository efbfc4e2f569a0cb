// Self-registration of op bindings into one pybind11 module.
//
// Every kernel source file (csrc/cpu/*.cpp, csrc/cuda/*.cu) registers its
// bindings with THRESHER_REGISTER(name) { m.def(...); } so adding an op never
// edits a shared file. The module init (module.cpp / module.cu) runs every
// registered function in name order. The registry is a function-local static,
// so static-initialisation order across translation units does not matter.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <map>
#include <string>

namespace thresher {

using RegisterFn = std::function<void(pybind11::module_&)>;

inline std::map<std::string, RegisterFn>& registry() {
  static std::map<std::string, RegisterFn> r;
  return r;
}

struct Registrar {
  Registrar(const char* name, RegisterFn fn) { registry()[name] = std::move(fn); }
};

inline void register_all(pybind11::module_& m) {
  for (auto& kv : registry()) kv.second(m);
}

}  // namespace thresher

#define THRESHER_CONCAT_(a, b) a##b
#define THRESHER_CONCAT(a, b) THRESHER_CONCAT_(a, b)
#define THRESHER_REGISTER(NAME)                                                                                        \
  static void THRESHER_CONCAT(thresher_register_, NAME)(pybind11::module_ & m);                                        \
  static ::thresher::Registrar THRESHER_CONCAT(thresher_registrar_, NAME)(#NAME,                                       \
                                                                          &THRESHER_CONCAT(thresher_register_, NAME)); \
  static void THRESHER_CONCAT(thresher_register_, NAME)(pybind11::module_ & m)
