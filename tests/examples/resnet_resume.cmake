# A run of examples/resnet_fashion_mnist saved after some steps and resumed
# must end exactly where the uninterrupted run ends: the same model file and
# the same optimizer, schedule and step counters, byte for byte. Tiny runs of
# two epochs, stopped inside the second one (so the resumed run seeks within
# an epoch), with SGD (momentum buffers) and with AdamW (moments and step
# counts) under a step schedule.
#   cmake -DDEMO=<resnet_fashion_mnist> -DWORK_DIR=<dir> -P resnet_resume.cmake
foreach(var DEMO WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "resnet_resume.cmake: ${var} is not set, expected -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# 128 images in batches of 2 x 8: 8 steps per epoch, 16 in all; stop after 11.
set(common --devices cpu:0,cpu:1 --per-device-batch 8 --train-limit 128 --test-limit 64 --epochs 2 --warmup 3
           --widths 8,16 --quiet)

function(run_demo)
  execute_process(COMMAND "${DEMO}" ${common} ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}${err}")
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "resnet_fashion_mnist ${ARGN} exited with ${status}, expected 0")
  endif()
endfunction()

function(check_same a b)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${a}" "${b}" RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "'${b}' differs from '${a}', expected the resumed run to end as the uninterrupted one")
  endif()
endfunction()

foreach(optimizer sgd adamw)
  set(flags --optimizer ${optimizer})
  if(optimizer STREQUAL "adamw")
    list(APPEND flags --schedule step)
  endif()
  set(dir "${WORK_DIR}/${optimizer}")
  run_demo(${flags} --save "${dir}-whole.safetensors")
  run_demo(${flags} --steps 11 --save "${dir}-part.safetensors")
  run_demo(${flags} --resume "${dir}-part.safetensors" --save "${dir}-resumed.safetensors")
  check_same("${dir}-whole.safetensors" "${dir}-resumed.safetensors")
  check_same("${dir}-whole.safetensors.optim.safetensors" "${dir}-resumed.safetensors.optim.safetensors")
  message("${optimizer}: the resumed run saved the uninterrupted run's model and optimizer state")
endforeach()
