# Copy policy trees into the build directory with the modes an admin would
# give them: files 0644, directories 0755, whatever the umask and whatever
# modes the checkout has (git keeps no mode but x). The copy is made anew each
# time, so a file removed from the source is gone from the copy too.
#   cmake -DSOURCE=<source dir> -DDEST=<copy dir> -DTREES=<tree>,<tree>... -P copy_policy_trees.cmake
# Each tree keeps its path below DEST as below SOURCE, so a relative path
# between two trees (tests/data/policy/../../../policies) still resolves.
cmake_minimum_required(VERSION 3.20)
string(REPLACE "," ";" TREES "${TREES}")
set(file_modes OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
set(dir_modes OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ
              WORLD_EXECUTE)
file(REMOVE_RECURSE ${DEST})
foreach(tree ${TREES})
  # The directories down to the tree's parent: made with the umask, then 0755.
  get_filename_component(parent ${tree} DIRECTORY)
  set(dir ${DEST})
  file(MAKE_DIRECTORY ${dir})
  file(CHMOD ${dir} PERMISSIONS ${dir_modes})
  string(REPLACE "/" ";" parts "${parent}")
  foreach(part ${parts})
    set(dir ${dir}/${part})
    file(MAKE_DIRECTORY ${dir})
    file(CHMOD ${dir} PERMISSIONS ${dir_modes})
  endforeach()
  file(COPY ${SOURCE}/${tree} DESTINATION ${dir} FILE_PERMISSIONS ${file_modes}
       DIRECTORY_PERMISSIONS ${dir_modes})
endforeach()
