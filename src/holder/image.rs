//! The holder program: a static ELF-64 executable written by hand, with
//! machine code for x86_64 (poll the lifeline on fd 3, else pause) and for
//! aarch64 (pause only), and the builder of its bytes. Bytes only: the
//! sealed memfd it is run from is made in `fds.rs`.

/// The name the holder gives itself (`ps -o comm`).
pub(crate) const HOLDER_COMM: &str = "podnet-pause";

/// Load address of the image.
const BASE: u64 = 0x40_0000;
/// Sizes of the ELF header and of one program header (ELF-64).
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;

/// Machine code of the holder, then its NUL-terminated name. It polls its
/// fd 3 (a pidfd of its creator: see
/// [`lifeline`](super::lifeline::lifeline)) and exits once that is
/// readable; without an fd 3 (`POLLNVAL`), or if `poll` fails but for
/// EINTR, it pauses forever.
///
/// ```text
///  0: bf 0f 00 00 00           mov  edi, 15             ; PR_SET_NAME
///  5: 48 8d 35 4a 00 00 00     lea  rsi, [rip + 74]     ; -> name at 86
/// 12: b8 9d 00 00 00           mov  eax, 157            ; SYS_prctl
/// 17: 0f 05                    syscall
/// 19: 48 b8 03 00 00 00        movabs rax, 0x100000003  ; struct pollfd:
///     01 00 00 00                                       ;  fd 3, POLLIN
/// 29: 50                       push rax
/// 30: 48 89 e7                 mov  rdi, rsp
/// 33: be 01 00 00 00     poll: mov  esi, 1              ; one fd
/// 38: ba ff ff ff ff           mov  edx, -1             ; no timeout
/// 43: b8 07 00 00 00           mov  eax, 7              ; SYS_poll
/// 48: 0f 05                    syscall
/// 50: 48 83 f8 fc              cmp  rax, -4             ; -EINTR: again
/// 54: 74 e9                    je   poll
/// 56: 48 85 c0                 test rax, rax
/// 59: 7e 10                    jle  pause               ; another error
/// 61: f6 44 24 06 20           test byte [rsp + 6], 0x20 ; revents POLLNVAL
/// 66: 75 09                    jnz  pause
/// 68: 31 ff                    xor  edi, edi
/// 70: b8 e7 00 00 00           mov  eax, 231            ; SYS_exit_group
/// 75: 0f 05                    syscall
/// 77: b8 22 00 00 00    pause: mov  eax, 34             ; SYS_pause
/// 82: 0f 05                    syscall
/// 84: eb f7                    jmp  pause
/// 86: "podnet-pause\0"
/// ```
#[cfg(target_arch = "x86_64")]
const CODE: &[u8] = &[
    0xbf, 0x0f, 0x00, 0x00, 0x00, // mov edi, 15
    0x48, 0x8d, 0x35, 0x4a, 0x00, 0x00, 0x00, // lea rsi, [rip+74]
    0xb8, 0x9d, 0x00, 0x00, 0x00, // mov eax, 157
    0x0f, 0x05, // syscall
    0x48, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // movabs rax
    0x50, // push rax
    0x48, 0x89, 0xe7, // mov rdi, rsp
    0xbe, 0x01, 0x00, 0x00, 0x00, // mov esi, 1
    0xba, 0xff, 0xff, 0xff, 0xff, // mov edx, -1
    0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xf8, 0xfc, // cmp rax, -4
    0x74, 0xe9, // je -23
    0x48, 0x85, 0xc0, // test rax, rax
    0x7e, 0x10, // jle +16
    0xf6, 0x44, 0x24, 0x06, 0x20, // test byte [rsp+6], 0x20
    0x75, 0x09, // jnz +9
    0x31, 0xff, // xor edi, edi
    0xb8, 0xe7, 0x00, 0x00, 0x00, // mov eax, 231
    0x0f, 0x05, // syscall
    0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34
    0x0f, 0x05, // syscall
    0xeb, 0xf7, // jmp -9
];
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62; // EM_X86_64

/// For AArch64, which has no `pause` syscall: `ppoll(NULL, 0, NULL, NULL)`
/// sleeps until a signal, as `pause` does. No lifeline here (its holders
/// die with their creator by a parent-death signal): it only pauses.
///
/// ```text
///  0: d28001e0   mov  x0, #15           ; PR_SET_NAME
///  4: 10000141   adr  x1, #40           ; -> name at 44
///  8: d28014e8   mov  x8, #167          ; SYS_prctl
/// 12: d4000001   svc  #0
/// 16: d2800000   loop: mov x0, #0
/// 20: d2800001   mov  x1, #0
/// 24: d2800002   mov  x2, #0
/// 28: d2800003   mov  x3, #0
/// 32: d2800928   mov  x8, #73           ; SYS_ppoll
/// 36: d4000001   svc  #0
/// 40: 17fffffa   b    loop
/// 44: "podnet-pause\0"
/// ```
#[cfg(target_arch = "aarch64")]
const CODE: &[u8] = &[
    0xe0, 0x01, 0x80, 0xd2, 0x41, 0x01, 0x00, 0x10, 0xe8, 0x14, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
    0x00, 0x00, 0x80, 0xd2, 0x01, 0x00, 0x80, 0xd2, 0x02, 0x00, 0x80, 0xd2, 0x03, 0x00, 0x80, 0xd2,
    0x28, 0x09, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4, 0xfa, 0xff, 0xff, 0x17,
];
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183; // EM_AARCH64

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("podnet's holder program exists for x86_64 and aarch64 only");

/// A static ELF-64 executable: one header, one read+execute `PT_LOAD`
/// segment mapping the whole file, then `CODE` and the holder's name.
///
/// A holder execs this rather than living on as a plain fork: a fork of a
/// multi-threaded runtime shares its whole heap copy-on-write, and keeps
/// all of it alive once the creator exits. The program (86 bytes of code
/// on x86_64) names itself `podnet-pause`, then polls its fd 3 and exits
/// once that is readable, or, without an fd 3, calls `pause()` forever:
/// like Kubernetes' `pause.c`, minus the C runtime.
pub(super) fn holder_image() -> Vec<u8> {
    let code_off = usize::from(EHDR_SIZE + PHDR_SIZE);
    let total = code_off + CODE.len() + HOLDER_COMM.len() + 1;
    let size = total as u64;
    let mut e = Vec::with_capacity(total);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    e.extend_from_slice(&MACHINE.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes()); // e_version
    e.extend_from_slice(&(BASE + code_off as u64).to_le_bytes()); // e_entry
    e.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&EHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&PHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // p_type = PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // p_flags = R | X
    e.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    e.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    e.extend_from_slice(&size.to_le_bytes()); // p_filesz
    e.extend_from_slice(&size.to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(CODE);
    e.extend_from_slice(HOLDER_COMM.as_bytes());
    e.push(0);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_a_well_formed_elf() {
        let img = holder_image();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(
            img.len(),
            usize::from(EHDR_SIZE + PHDR_SIZE) + CODE.len() + HOLDER_COMM.len() + 1
        );
        let entry = u64::from_le_bytes(img[24..32].try_into().unwrap());
        assert_eq!(entry, BASE + u64::from(EHDR_SIZE + PHDR_SIZE));
        assert!(img.ends_with(b"podnet-pause\0"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn name_is_where_the_code_points() {
        // lea rsi, [rip+disp]: disp is relative to the next instruction (offset 12).
        let disp = u32::from_le_bytes(CODE[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + disp, CODE.len());
    }
}
