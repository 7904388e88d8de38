// Tensor: storage, factories, host access, conversions and views.

#include "syncbn/core/tensor.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <sstream>
#include <vector>

#include "backend/kernels.hpp"
#include "backend/storage.hpp"
#include "random.hpp"
#include "syncbn/error.hpp"

namespace syncbn::core {

namespace detail {

Storage::Storage(Device device, std::size_t nbytes) : device_(device), nbytes_(nbytes) {
  if (nbytes > 0) data_ = memory_kernels(device.kind()).allocate(device, nbytes);
}

Storage::~Storage() {
  if (owned_ && data_ != nullptr) memory_kernels(device_.kind()).release(device_, data_, nbytes_);
}

}  // namespace detail

namespace {

void check_defined(const Tensor& t, const char* op) {
  SYNCBN_CHECK(t.defined(), op, ": the tensor is undefined, expected a tensor with storage");
}

// The float64 host staging of a factory's values (numel doubles).
std::vector<double> staging(const Shape& shape, const char* op) {
  try {
    return std::vector<double>(static_cast<std::size_t>(shape.numel()));
  } catch (const std::bad_alloc&) {
    SYNCBN_THROW(OutOfMemory, op, ": cannot allocate ", shape.numel(), " float64 values (", shape.numel() * 8,
                 " bytes) of host memory to stage ", shape, ": out of memory, expected a tensor that fits in memory");
  }
}

// `out` holding `values` converted (the float64 staging of the factories).
Tensor from_doubles(const std::vector<double>& values, const Tensor& out) {
  const Device device = out.device();
  Tensor host = device.is_cpu() ? out : Tensor::empty(out.shape(), out.dtype(), Device::cpu());
  detail::memory_kernels(DeviceKind::CPU)
      .convert(Device::cpu(), host.raw_data(), out.dtype(), values.data(), DType::Float64, out.numel());
  if (!device.is_cpu()) out.copy_(host);
  return out;
}

template <class T>
Tensor from_host(const std::vector<T>& values, const Shape& shape, Device device) {
  SYNCBN_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(), "Tensor::from_vector: ", values.size(),
               " values, expected ", shape.numel(), " for shape ", shape);
  Tensor t = Tensor::empty(shape, dtype_of<T>(), device);
  detail::copy_kernels(device, Device::cpu()).copy(t.raw_data(), device, values.data(), Device::cpu(), t.nbytes());
  return t;
}

}  // namespace

Tensor::Tensor(std::shared_ptr<detail::Storage> storage, std::int64_t offset, const Shape& shape, DType dtype,
               Device device)
    : storage_(std::move(storage)), offset_(offset), shape_(shape), dtype_(dtype), device_(device) {}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  device.check_available();
  SYNCBN_CHECK(data != nullptr || shape.numel() == 0, "Tensor::from_blob: data is null for ", shape,
               ", expected a pointer to ", shape.numel(), " elements");
  const auto itemsize = static_cast<std::int64_t>(dtype_size(dtype));
  SYNCBN_CHECK(shape.numel() <= INT64_MAX / itemsize, "Tensor::from_blob: ", shape, " of ", dtype_name(dtype),
               " needs more than ", INT64_MAX, " bytes, expected a tensor whose size in bytes fits int64");
  const auto nbytes = static_cast<std::size_t>(shape.numel() * itemsize);
  return Tensor(std::make_shared<detail::Storage>(device, data, nbytes), 0, shape, dtype, device);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  device.check_available();
  const auto itemsize = static_cast<std::int64_t>(dtype_size(dtype));
  SYNCBN_CHECK(shape.numel() <= INT64_MAX / itemsize, "Tensor: ", shape, " of ", dtype_name(dtype), " needs more than ",
               INT64_MAX, " bytes, expected a tensor whose size in bytes fits int64");
  const auto nbytes = static_cast<std::size_t>(shape.numel() * itemsize);
  try {
    return Tensor(std::make_shared<detail::Storage>(device, nbytes), 0, shape, dtype, device);
  } catch (const std::bad_alloc&) {
    SYNCBN_THROW(OutOfMemory, "Tensor: cannot allocate ", shape, " of ", dtype_name(dtype), " (", nbytes,
                 " bytes) on ", device, ": out of memory, expected a tensor that fits in the device's free memory");
  }
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  SYNCBN_CHECK(dtype != DType::Int64 || (std::isfinite(value) && value >= -9223372036854775808.0 &&
                                         value < 9223372036854775808.0),
               "Tensor::full: value ", value, " cannot be stored as int64, expected a finite value within its range");
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, Device device) {
  return from_host(values, shape, device);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, Device device) {
  return from_host(values, shape, device);
}

Tensor Tensor::from_vector(const std::vector<std::int64_t>& values, const Shape& shape, Device device) {
  return from_host(values, shape, device);
}

Tensor Tensor::randn(const Shape& shape, std::uint64_t seed, DType dtype, Device device, double mean, double stddev) {
  SYNCBN_CHECK(is_floating(dtype), "Tensor::randn: dtype ", dtype_name(dtype), ", expected a floating type");
  SYNCBN_CHECK(stddev >= 0, "Tensor::randn: stddev is ", stddev, ", expected >= 0");
  Tensor out = Tensor::empty(shape, dtype, device);  // the size check and a clear error first
  const std::vector<double> values = staging(shape, "Tensor::randn");
  detail::fill_normal(const_cast<double*>(values.data()), shape.numel(), seed, mean, stddev);
  return from_doubles(values, out);
}

Tensor Tensor::rand(const Shape& shape, std::uint64_t seed, DType dtype, Device device, double low, double high) {
  SYNCBN_CHECK(is_floating(dtype), "Tensor::rand: dtype ", dtype_name(dtype), ", expected a floating type");
  SYNCBN_CHECK(low <= high, "Tensor::rand: low is ", low, " and high ", high, ", expected low <= high");
  Tensor out = Tensor::empty(shape, dtype, device);
  const std::vector<double> values = staging(shape, "Tensor::rand");
  detail::fill_uniform(const_cast<double*>(values.data()), shape.numel(), seed, low, high);
  return from_doubles(values, out);
}

std::string Tensor::str() const {
  std::ostringstream out;
  out << "Tensor(" << dtype_name(dtype_) << ", " << shape_ << ", " << device_ << (defined() ? ")" : ", undefined)");
  return out.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

void* Tensor::raw_data() const noexcept {
  if (storage_ == nullptr || storage_->data() == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<std::int64_t>(dtype_size(dtype_));
}

void Tensor::check_dtype_for_data(DType requested) const {
  SYNCBN_CHECK(requested == dtype_, "Tensor::data: requested ", dtype_name(requested), " elements, expected ",
               dtype_name(dtype_), " (the tensor's dtype)");
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  check_defined(*this, "Tensor::to_vector");
  std::vector<T> out(static_cast<std::size_t>(numel()));
  if (numel() == 0) return out;
  if (dtype_ == dtype_of<T>()) {
    detail::copy_kernels(Device::cpu(), device_).copy(out.data(), Device::cpu(), raw_data(), device_, nbytes());
    return out;
  }
  std::vector<unsigned char> raw(nbytes());
  detail::copy_kernels(Device::cpu(), device_).copy(raw.data(), Device::cpu(), raw_data(), device_, nbytes());
  detail::memory_kernels(DeviceKind::CPU).convert(Device::cpu(), out.data(), dtype_of<T>(), raw.data(), dtype_, numel());
  return out;
}

template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<std::int64_t> Tensor::to_vector<std::int64_t>() const;

double Tensor::item() const {
  check_defined(*this, "Tensor::item");
  SYNCBN_CHECK(numel() == 1, "Tensor::item: the tensor has ", numel(), " elements, expected 1");
  return to_vector<double>()[0];
}

Tensor Tensor::to(Device device) const {
  check_defined(*this, "Tensor::to");
  Tensor out = empty(shape_, dtype_, device);
  detail::copy_kernels(device, device_).copy(out.raw_data(), device, raw_data(), device_, nbytes());
  return out;
}

Tensor Tensor::to(DType dtype) const {
  check_defined(*this, "Tensor::to");
  Tensor out = empty(shape_, dtype, device_);
  detail::memory_kernels(device_.kind()).convert(device_, out.raw_data(), dtype, raw_data(), dtype_, numel());
  return out;
}

Tensor Tensor::clone() const {
  check_defined(*this, "Tensor::clone");
  return to(device_);
}

Tensor Tensor::rows(std::int64_t begin, std::int64_t end) const {
  check_defined(*this, "Tensor::rows");
  SYNCBN_CHECK(rank() >= 1, "Tensor::rows: the tensor is a scalar, expected rank >= 1");
  SYNCBN_CHECK(0 <= begin && begin <= end && end <= shape_[0], "Tensor::rows: range [", begin, ", ", end,
               ") is invalid, expected 0 <= begin <= end <= ", shape_[0]);
  const std::int64_t row_elements = shape_[0] == 0 ? 0 : numel() / shape_[0];
  return Tensor(storage_, offset_ + begin * row_elements, shape_.with_rows(end - begin), dtype_, device_);
}

Tensor Tensor::view(std::int64_t offset, const Shape& shape) const {
  check_defined(*this, "Tensor::view");
  SYNCBN_CHECK(offset >= 0 && offset + shape.numel() <= numel(), "Tensor::view: elements [", offset, ", ",
               offset + shape.numel(), ") of shape ", shape, " are out of range, expected them within [0, ", numel(), ")");
  return Tensor(storage_, offset_ + offset, shape, dtype_, device_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  check_defined(*this, "Tensor::reshape");
  SYNCBN_CHECK(shape.numel() == numel(), "Tensor::reshape: shape ", shape, " has ", shape.numel(),
               " elements, expected ", numel(), " (the elements of ", shape_, ")");
  return Tensor(storage_, offset_, shape, dtype_, device_);
}

Tensor Tensor::relabel(Device device) const {
  check_defined(*this, "Tensor::relabel");
  SYNCBN_CHECK(device.shares_memory_with(device_), "Tensor::relabel: ",
               device, " does not share memory with ", device_, ", expected another logical CPU device");
  return Tensor(storage_, offset_, shape_, dtype_, device);
}

Tensor Tensor::onto(Device device) const {
  check_defined(*this, "Tensor::onto");
  if (device == device_) return *this;
  return device.shares_memory_with(device_) ? relabel(device) : to(device);
}

const Tensor& Tensor::fill_(double value) const {
  check_defined(*this, "Tensor::fill_");
  SYNCBN_CHECK(dtype_ != DType::Int64 || (std::isfinite(value) && value >= -9223372036854775808.0 &&
                                          value < 9223372036854775808.0),
               "Tensor::fill_: value ", value, " cannot be stored as int64, expected a finite value within its range");
  detail::memory_kernels(device_.kind()).fill(device_, raw_data(), dtype_, numel(), value);
  return *this;
}

const Tensor& Tensor::copy_(const Tensor& src) const {
  check_defined(*this, "Tensor::copy_");
  check_defined(src, "Tensor::copy_");
  SYNCBN_CHECK(src.shape_ == shape_, "Tensor::copy_: source has shape ", src.shape_, ", expected ", shape_);
  SYNCBN_CHECK(src.dtype_ == dtype_, "Tensor::copy_: source has dtype ", dtype_name(src.dtype_), ", expected ",
               dtype_name(dtype_));
  detail::copy_kernels(device_, src.device_).copy(raw_data(), device_, src.raw_data(), src.device_, nbytes());
  return *this;
}

}  // namespace syncbn::core
