//! Disk images and their stores for Nubo. Not built yet: see the devices issue (qcow2).
