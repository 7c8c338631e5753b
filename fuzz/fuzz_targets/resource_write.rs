#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bulk_export_fuzz::targets::resource_write(data));
