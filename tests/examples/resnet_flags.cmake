# Every bad flag of examples/resnet_fashion_mnist is refused with exit status
# 2 and a message that names the flag, what it expected and what it got.
#   cmake -DDEMO=<resnet_fashion_mnist> -DWORK_DIR=<dir> -P resnet_flags.cmake
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
file(WRITE "${WORK_DIR}/junk.safetensors" "junk")
file(WRITE "${WORK_DIR}/junk.safetensors.optim.safetensors" "junk")

set(cases
  "--bn|batch|--bn: expected sync, local or none, got 'batch'"
  "--layout|nwhc|--layout: expected nchw or nhwc, got 'nwhc'"
  "--epochs|0|--epochs: expected an integer >= 1, got '0'"
  "--per-device-batch|8x|--per-device-batch: expected an integer >= 1, got '8x'"
  "--lr|-1|--lr: expected a number > 0, got '-1'"
  "--momentum|1|--momentum: expected a number >= 0 and < 1, got '1'"
  "--optimizer|adam|--momentum|0.5|--momentum: applies to --optimizer sgd, got --optimizer adam"
  "--widths|16,,64|--widths: expected an integer >= 1, got ''"
  "--devices|cpu:0,gpu:1|--devices: Device: cannot parse"
  "--schedule|linear|--schedule: expected cosine, step or none, got 'linear'"
  "--frobnicate|unknown flag '--frobnicate'"
  "--seed|--seed: expected a value, got none"
  "--save|${WORK_DIR}/no/such/dir/model.safetensors|--save: '${WORK_DIR}/no/such/dir' is not a directory"
  "--csv|${WORK_DIR}/no/such/dir/log.csv|--csv: cannot write '${WORK_DIR}/no/such/dir/log.csv', expected a writable file"
  "--train-limit|10|--train-limit: 10 training images make no batch of 128"
  "--resume|${WORK_DIR}/missing.safetensors|--resume: '${WORK_DIR}/missing.safetensors' is not a file, expected one that --save wrote"
  "--resume|${WORK_DIR}/junk.safetensors|--resume: load_safetensors: '${WORK_DIR}/junk.safetensors.optim.safetensors'"
)
# The last two cases are found once the data is read: without Fashion-MNIST
# they cannot run, and the test reports skipped (the loader's message, on a
# line of its own, is what CTest's SKIP_REGULAR_EXPRESSION looks for) once
# every other case has passed.
set(no_data "")
foreach(entry IN LISTS cases)
  string(REPLACE "|" ";" entry "${entry}")
  list(POP_BACK entry expected)
  execute_process(COMMAND "${DEMO}" ${entry} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(err MATCHES "load_fashion_mnist: '[^']*' not found")
    set(no_data "${err}")
    continue()
  endif()
  string(FIND "${err}" "resnet_fashion_mnist: ${expected}" at)
  if(NOT status EQUAL 2 OR at EQUAL -1)
    message(FATAL_ERROR "resnet_fashion_mnist ${entry}: exit status ${status} and\n${err}\n"
                        "expected status 2 and 'resnet_fashion_mnist: ${expected}'")
  endif()
  message("refused: ${entry}")
endforeach()
if(no_data)
  message("${no_data}")
  message(FATAL_ERROR "some cases need Fashion-MNIST")
endif()
