# cmake -DNM=<nm> -DLEVEL=<level> -DOBJECTS=<object|object|...> -P check_cpu_level_symbols.cmake
#
# OBJECTS: what CPU level LEVEL contributes to the library (its isolated
# object, see src/core/CMakeLists.txt, or its object files where the
# isolation step is not available). Fails when one of them defines a global or
# weak symbol that is not unique to the level, i.e. whose (mangled) name does
# not contain the namespace syncbn::cpu::<LEVEL>: the linker could keep that
# level's copy for callers of another level (Note [CPU dispatch]). The one
# exception is DW.ref.* (a data word holding the address of the exception
# personality routine, the same bytes for every level: no code).

string(LENGTH "${LEVEL}" length)
set(marker "6syncbn3cpu${length}${LEVEL}")
string(REPLACE "|" ";" objects "${OBJECTS}")
set(offenders "")
set(checked 0)
foreach(object IN LISTS objects)
  execute_process(COMMAND "${NM}" --defined-only "${object}" OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nm failed on ${object}")
  endif()
  string(REPLACE "\n" ";" lines "${listing}")
  foreach(line IN LISTS lines)
    # "<address> <type> <name>"; global and weak types are upper case, plus u (unique), v and w (weak).
    if(line MATCHES "^[0-9a-fA-F]* ([A-TV-Zuvw]) (.+)$")
      set(name "${CMAKE_MATCH_2}")
      if(name MATCHES "^DW\\.ref\\.")
        continue()
      endif()
      math(EXPR checked "${checked} + 1")
      string(FIND "${name}" "${marker}" at)
      if(at EQUAL -1)
        get_filename_component(file "${object}" NAME)
        list(APPEND offenders "${file}: ${CMAKE_MATCH_1} ${name}")
      endif()
    endif()
  endforeach()
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "no global symbols found in the ${LEVEL} objects (${OBJECTS}): nothing was checked")
endif()
if(offenders)
  list(LENGTH offenders count)
  list(JOIN offenders "\n  " text)
  message(FATAL_ERROR "${count} symbol(s) of the ${LEVEL} CPU kernels are not in namespace syncbn::cpu::${LEVEL} "
                      "(shared with other levels at link time):\n  ${text}")
endif()
message(STATUS "${checked} global symbols of the ${LEVEL} CPU kernels, all in syncbn::cpu::${LEVEL}")
