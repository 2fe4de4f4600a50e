// Tensor: a non-owning, row-major, contiguous view of typed memory (host or device, as the backend that made
// it). DeviceBuffer: move-only owner of one allocation, freed by the deleter its backend gave it.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "core/check.h"
#include "core/dtype.h"

namespace tessera {

class Tensor {
 public:
  static constexpr int kMaxDims = 4;

  Tensor() = default;
  Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape) : data_(data), dtype_(dtype) {
    TESSERA_CHECK(shape.size() <= kMaxDims);
    for (int64_t d : shape) shape_[ndim_++] = d;
    // A block-quantized tensor's rows are whole blocks.
    TESSERA_CHECK(!IsQuantized(dtype) || (ndim_ >= 1 && shape_[ndim_ - 1] % DTypeBlockElems(dtype) == 0));
  }

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  int ndim() const { return ndim_; }
  int64_t dim(int i) const { return shape_[i < 0 ? ndim_ + i : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim_; ++i) n *= shape_[i];
    return n;
  }
  int64_t nbytes() const { return DTypeBytes(dtype_, numel()); }
  bool empty() const { return data_ == nullptr; }

  // Same memory, another shape with the same element count.
  Tensor Reshape(std::initializer_list<int64_t> shape) const {
    Tensor t(data_, dtype_, shape);
    TESSERA_CHECK(t.numel() == numel());
    return t;
  }
  // Rows [begin, begin + count) along dim 0.
  Tensor Rows(int64_t begin, int64_t count) const {
    TESSERA_CHECK(ndim_ >= 1 && begin >= 0 && begin + count <= shape_[0]);
    int64_t row_elems = 1;
    for (int i = 1; i < ndim_; ++i) row_elems *= shape_[i];
    Tensor t = *this;
    t.shape_[0] = count;
    t.data_ = static_cast<char*>(data_) + begin * DTypeBytes(dtype_, row_elems);
    return t;
  }

  std::string ShapeString() const {
    std::string s = "[";
    for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
    return s + "]";
  }

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  int ndim_ = 0;
  std::array<int64_t, kMaxDims> shape_{};
};

class DeviceBuffer {
 public:
  using Deleter = void (*)(void*);
  DeviceBuffer() = default;
  DeviceBuffer(void* data, int64_t bytes, Deleter deleter) : data_(data), bytes_(bytes), deleter_(deleter) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      deleter_ = std::exchange(o.deleter_, nullptr);
    }
    return *this;
  }
  ~DeviceBuffer() { Reset(); }

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  // A view of the whole buffer (or its start) as a tensor of the given type and shape.
  Tensor View(DType dtype, std::initializer_list<int64_t> shape) const {
    Tensor t(data_, dtype, shape);
    TESSERA_CHECK(t.nbytes() <= bytes_);
    return t;
  }

 private:
  void Reset() {
    if (data_ && deleter_) deleter_(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  Deleter deleter_ = nullptr;
};

}  // namespace tessera
