# vhost_add_plugin(<name> KIND backend|model|dataset|judge SOURCES ... [TORCH]
#                  [LIBRARIES ...] [OUTPUT_DIRECTORY dir] [NO_INSTALL])
#
# Builds a vhost plugin: a MODULE library named vhost_<kind>_<name>.so (the host finds plugins
# by that name), with hidden visibility and a version script that exports only the entry point,
# linked against vhost::sdk. TORCH links libtorch and records its ABI in the descriptor.
# Output: OUTPUT_DIRECTORY, else the build tree's plugin folder (in vhost's own tree) or
# <build>/vhost/plugins. Installs to <libdir>/vhost/plugins, where an installed vhost looks.
set(_VHOST_PLUGIN_MAP "${CMAKE_CURRENT_LIST_DIR}/vhost_plugin.map")

function(vhost_add_plugin name)
  cmake_parse_arguments(ARG "TORCH;NO_INSTALL" "KIND;OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_KIND MATCHES "^(backend|model|dataset|judge)$")
    message(FATAL_ERROR "vhost_add_plugin(${name}): KIND must be backend, model, dataset or judge")
  endif()
  if(NOT name MATCHES "^[a-z0-9][a-z0-9_-]*$")
    message(FATAL_ERROR "vhost_add_plugin(${name}): use lower-case letters, digits, _ and -")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "vhost_add_plugin(${name}): SOURCES is required")
  endif()
  set(target vhost_${ARG_KIND}_${name})
  if(ARG_OUTPUT_DIRECTORY)
    set(outdir ${ARG_OUTPUT_DIRECTORY})
  elseif(VHOST_PLUGIN_OUTPUT_DIRECTORY)
    set(outdir ${VHOST_PLUGIN_OUTPUT_DIRECTORY})
  else()
    set(outdir ${CMAKE_BINARY_DIR}/vhost/plugins)
  endif()

  add_library(${target} MODULE ${ARG_SOURCES})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY ${outdir}
    INSTALL_RPATH_USE_LINK_PATH ON
    LINK_DEPENDS ${_VHOST_PLUGIN_MAP})
  target_compile_features(${target} PRIVATE cxx_std_17)
  target_link_libraries(${target} PRIVATE vhost::sdk ${ARG_LIBRARIES})
  target_link_options(${target} PRIVATE "LINKER:--version-script=${_VHOST_PLUGIN_MAP}" "LINKER:--no-undefined")

  if(ARG_TORCH)
    if(NOT TORCH_FOUND)
      find_package(Torch REQUIRED)
    endif()
    set(gpu "cpu")
    if(TARGET torch_cuda OR TARGET c10_cuda)
      if(CUDAToolkit_VERSION)
        set(gpu "cuda${CUDAToolkit_VERSION}")
      elseif(CUDA_VERSION)
        set(gpu "cuda${CUDA_VERSION}")
      else()
        set(gpu "cuda")
      endif()
    elseif(TARGET torch_hip OR TARGET c10_hip)
      set(gpu "hip")
    endif()
    separate_arguments(_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    target_compile_options(${target} PRIVATE ${_torch_flags})
    target_compile_definitions(${target} PRIVATE VHOST_PLUGIN_USES_TORCH=1 VHOST_TORCH_GPU="${gpu}")
    target_link_libraries(${target} PRIVATE ${TORCH_LIBRARIES})
    # An installed plugin still finds a libtorch outside the system folders (PyTorch's wheel).
    get_filename_component(_torch_libdir "${TORCH_LIBRARY}" DIRECTORY)
    if(_torch_libdir AND NOT _torch_libdir IN_LIST CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES)
      set_property(TARGET ${target} APPEND PROPERTY INSTALL_RPATH "${_torch_libdir}")
    endif()
  endif()

  if(NOT ARG_NO_INSTALL)
    include(GNUInstallDirs)
    install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/vhost/plugins)
  endif()
endfunction()
