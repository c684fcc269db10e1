//go:build !noasm

#include "textflag.h"

// func addAVX2(dst, a, b *float32, n int)   dst = a + b, n % 8 == 0
TEXT ·addAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DX
	MOVQ n+24(FP), CX
add32:
	CMPQ CX, $32
	JB   add8
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS 64(SI), Y2
	VMOVUPS 96(SI), Y3
	VADDPS  (DX), Y0, Y0
	VADDPS  32(DX), Y1, Y1
	VADDPS  64(DX), Y2, Y2
	VADDPS  96(DX), Y3, Y3
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ $128, SI
	ADDQ $128, DX
	ADDQ $128, DI
	SUBQ $32, CX
	JMP  add32
add8:
	CMPQ CX, $8
	JB   adddone
	VMOVUPS (SI), Y0
	VADDPS  (DX), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  add8
adddone:
	VZEROUPPER
	RET

// func subAVX2(dst, a, b *float32, n int)   dst = a - b, n % 8 == 0
TEXT ·subAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DX
	MOVQ n+24(FP), CX
sub8:
	CMPQ CX, $8
	JB   subdone
	VMOVUPS (SI), Y0
	VSUBPS  (DX), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  sub8
subdone:
	VZEROUPPER
	RET

// func axpyAVX2(dst, x, y *float32, a float32, n int)   dst = a*x + y (mul, then add), n % 8 == 0
TEXT ·axpyAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DX
	VBROADCASTSS a+24(FP), Y15
	MOVQ n+32(FP), CX
axpy32:
	CMPQ CX, $32
	JB   axpy8
	VMULPS  (SI), Y15, Y0
	VMULPS  32(SI), Y15, Y1
	VMULPS  64(SI), Y15, Y2
	VMULPS  96(SI), Y15, Y3
	VADDPS  (DX), Y0, Y0
	VADDPS  32(DX), Y1, Y1
	VADDPS  64(DX), Y2, Y2
	VADDPS  96(DX), Y3, Y3
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ $128, SI
	ADDQ $128, DX
	ADDQ $128, DI
	SUBQ $32, CX
	JMP  axpy32
axpy8:
	CMPQ CX, $8
	JB   axpydone
	VMULPS  (SI), Y15, Y0
	VADDPS  (DX), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  axpy8
axpydone:
	VZEROUPPER
	RET

// func scaleAVX2(dst, x *float32, s float32, n int)   dst = s*x, n % 8 == 0
TEXT ·scaleAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ x+8(FP), SI
	VBROADCASTSS s+16(FP), Y15
	MOVQ n+24(FP), CX
scale8:
	CMPQ CX, $8
	JB   scaledone
	VMULPS  (SI), Y15, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  scale8
scaledone:
	VZEROUPPER
	RET

// Reductions: 16 float64 lanes in Y4..Y7 (lane l sums elements i ≡ l mod 16),
// combined as in combine16. n % 16 == 0.
#define COMBINE16 \
	VADDPD Y6, Y4, Y4 \
	VADDPD Y7, Y5, Y5 \
	VADDPD Y5, Y4, Y4 \
	VEXTRACTF128 $1, Y4, X1 \
	VADDPD X1, X4, X4 \
	VHADDPD X4, X4, X4

// func dotAVX2(a, b *float32, n int) float64
TEXT ·dotAVX2(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DX
	MOVQ n+16(FP), CX
	VXORPD Y4, Y4, Y4
	VXORPD Y5, Y5, Y5
	VXORPD Y6, Y6, Y6
	VXORPD Y7, Y7, Y7
dot16:
	CMPQ CX, $16
	JB   dotdone
	VCVTPS2PD (SI), Y0
	VCVTPS2PD 16(SI), Y1
	VCVTPS2PD 32(SI), Y2
	VCVTPS2PD 48(SI), Y3
	VCVTPS2PD (DX), Y8
	VCVTPS2PD 16(DX), Y9
	VCVTPS2PD 32(DX), Y10
	VCVTPS2PD 48(DX), Y11
	VFMADD231PD Y8, Y0, Y4
	VFMADD231PD Y9, Y1, Y5
	VFMADD231PD Y10, Y2, Y6
	VFMADD231PD Y11, Y3, Y7
	ADDQ $64, SI
	ADDQ $64, DX
	SUBQ $16, CX
	JMP  dot16
dotdone:
	COMBINE16
	VMOVSD X4, ret+24(FP)
	VZEROUPPER
	RET

// func sumSqAVX2(x *float32, n int) float64
TEXT ·sumSqAVX2(SB), NOSPLIT, $0-24
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VXORPD Y4, Y4, Y4
	VXORPD Y5, Y5, Y5
	VXORPD Y6, Y6, Y6
	VXORPD Y7, Y7, Y7
ss16:
	CMPQ CX, $16
	JB   ssdone
	VCVTPS2PD (SI), Y0
	VCVTPS2PD 16(SI), Y1
	VCVTPS2PD 32(SI), Y2
	VCVTPS2PD 48(SI), Y3
	VFMADD231PD Y0, Y0, Y4
	VFMADD231PD Y1, Y1, Y5
	VFMADD231PD Y2, Y2, Y6
	VFMADD231PD Y3, Y3, Y7
	ADDQ $64, SI
	SUBQ $16, CX
	JMP  ss16
ssdone:
	COMBINE16
	VMOVSD X4, ret+16(FP)
	VZEROUPPER
	RET

// func f32ToF16AVX2(dst *byte, src *float32, n int)   n % 8 == 0
TEXT ·f32ToF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
h32:
	CMPQ CX, $32
	JB   h8
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS 64(SI), Y2
	VMOVUPS 96(SI), Y3
	VCVTPS2PH $0, Y0, X0
	VCVTPS2PH $0, Y1, X1
	VCVTPS2PH $0, Y2, X2
	VCVTPS2PH $0, Y3, X3
	VMOVDQU X0, (DI)
	VMOVDQU X1, 16(DI)
	VMOVDQU X2, 32(DI)
	VMOVDQU X3, 48(DI)
	ADDQ $128, SI
	ADDQ $64, DI
	SUBQ $32, CX
	JMP  h32
h8:
	CMPQ CX, $8
	JB   hdone
	VMOVUPS (SI), Y0
	VCVTPS2PH $0, Y0, X0
	VMOVDQU X0, (DI)
	ADDQ $32, SI
	ADDQ $16, DI
	SUBQ $8, CX
	JMP  h8
hdone:
	VZEROUPPER
	RET

// func f16ToF32AVX2(dst *float32, src *byte, n int, add bool)   n % 8 == 0
TEXT ·f16ToF32AVX2(SB), NOSPLIT, $0-25
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVB add+24(FP), AX
	TESTB AL, AL
	JNZ  hadd8
hd8:
	CMPQ CX, $8
	JB   hddone
	VCVTPH2PS (SI), Y0
	VMOVUPS Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  hd8
hadd8:
	CMPQ CX, $8
	JB   hddone
	VCVTPH2PS (SI), Y0
	VADDPS  (DI), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  hadd8
hddone:
	VZEROUPPER
	RET

DATA bfconst<>+0(SB)/4, $0x00000001
DATA bfconst<>+4(SB)/4, $0x00007fff
DATA bfconst<>+8(SB)/4, $0x7fffffff
DATA bfconst<>+12(SB)/4, $0x7f800000
DATA bfconst<>+16(SB)/4, $0x00000040
GLOBL bfconst<>(SB), RODATA|NOPTR, $20

// BF16ROUND converts the 8 floats in Y0 to bfloat16 values in the 32-bit
// lanes of R (round to nearest even, NaN made quiet). Uses Y8, Y9.
#define BF16ROUND(R) \
	VPSRLD $16, Y0, R \
	VPAND Y10, R, R \
	VPADDD Y11, R, R \
	VPADDD Y0, R, R \
	VPSRLD $16, R, R \
	VPAND Y12, Y0, Y8 \
	VPCMPGTD Y13, Y8, Y8 \
	VPSRLD $16, Y0, Y9 \
	VPOR Y14, Y9, Y9 \
	VPBLENDVB Y8, Y9, R, R

// func f32ToBF16AVX2(dst *byte, src *float32, n int)   n % 16 == 0
TEXT ·f32ToBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VPBROADCASTD bfconst<>+0(SB), Y10
	VPBROADCASTD bfconst<>+4(SB), Y11
	VPBROADCASTD bfconst<>+8(SB), Y12
	VPBROADCASTD bfconst<>+12(SB), Y13
	VPBROADCASTD bfconst<>+16(SB), Y14
b16:
	CMPQ CX, $16
	JB   bdone
	VMOVUPS (SI), Y0
	BF16ROUND(Y1)
	VMOVUPS 32(SI), Y0
	BF16ROUND(Y2)
	VPACKUSDW Y2, Y1, Y3
	VPERMQ $0xD8, Y3, Y3
	VMOVDQU Y3, (DI)
	ADDQ $64, SI
	ADDQ $32, DI
	SUBQ $16, CX
	JMP  b16
bdone:
	VZEROUPPER
	RET

// func bf16ToF32AVX2(dst *float32, src *byte, n int, add bool)   n % 8 == 0
TEXT ·bf16ToF32AVX2(SB), NOSPLIT, $0-25
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVB add+24(FP), AX
	TESTB AL, AL
	JNZ  badd8
bd8:
	CMPQ CX, $8
	JB   bddone
	VPMOVZXWD (SI), Y0
	VPSLLD $16, Y0, Y0
	VMOVDQU Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  bd8
badd8:
	CMPQ CX, $8
	JB   bddone
	VPMOVZXWD (SI), Y0
	VPSLLD $16, Y0, Y0
	VADDPS (DI), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  badd8
bddone:
	VZEROUPPER
	RET

DATA revidx<>+0(SB)/4, $7
DATA revidx<>+4(SB)/4, $6
DATA revidx<>+8(SB)/4, $5
DATA revidx<>+12(SB)/4, $4
DATA revidx<>+16(SB)/4, $3
DATA revidx<>+20(SB)/4, $2
DATA revidx<>+24(SB)/4, $1
DATA revidx<>+28(SB)/4, $0
GLOBL revidx<>(SB), RODATA|NOPTR, $32

// func packSignsAVX2(dst *byte, src *float32, n int)   n % 32 == 0
// Byte j/8 bit 7-(j%8) = src[j] >= 0: reverse each group of 8, compare, movmsk.
TEXT ·packSignsAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VMOVDQU revidx<>(SB), Y14
	VXORPS Y15, Y15, Y15
p32:
	CMPQ CX, $32
	JB   pdone
	VPERMPS (SI), Y14, Y0
	VPERMPS 32(SI), Y14, Y1
	VPERMPS 64(SI), Y14, Y2
	VPERMPS 96(SI), Y14, Y3
	VCMPPS $0x1D, Y15, Y0, Y0
	VCMPPS $0x1D, Y15, Y1, Y1
	VCMPPS $0x1D, Y15, Y2, Y2
	VCMPPS $0x1D, Y15, Y3, Y3
	VMOVMSKPS Y0, AX
	VMOVMSKPS Y1, BX
	VMOVMSKPS Y2, DX
	VMOVMSKPS Y3, R8
	SHLL $8, BX
	SHLL $16, DX
	SHLL $24, R8
	ORL  BX, AX
	ORL  DX, AX
	ORL  R8, AX
	MOVL AX, (DI)
	ADDQ $128, SI
	ADDQ $4, DI
	SUBQ $32, CX
	JMP  p32
pdone:
	VZEROUPPER
	RET

DATA bitsel<>+0(SB)/4, $0x80
DATA bitsel<>+4(SB)/4, $0x40
DATA bitsel<>+8(SB)/4, $0x20
DATA bitsel<>+12(SB)/4, $0x10
DATA bitsel<>+16(SB)/4, $0x08
DATA bitsel<>+20(SB)/4, $0x04
DATA bitsel<>+24(SB)/4, $0x02
DATA bitsel<>+28(SB)/4, $0x01
GLOBL bitsel<>(SB), RODATA|NOPTR, $32

// func unpackSignsAVX2(dst *float32, bits *byte, nbytes int, scale float32, add bool)
// Writes (or adds) 8 floats ±scale per byte.
TEXT ·unpackSignsAVX2(SB), NOSPLIT, $0-29
	MOVQ dst+0(FP), DI
	MOVQ bits+8(FP), SI
	MOVQ nbytes+16(FP), CX
	VBROADCASTSS scale+24(FP), Y13
	VXORPS Y12, Y12, Y12
	VSUBPS Y13, Y12, Y12
	VMOVDQU bitsel<>(SB), Y14
	MOVB add+28(FP), R8
	TESTB R8, R8
	JNZ  uadd
u1:
	TESTQ CX, CX
	JZ   udone
	MOVBLZX (SI), AX
	VMOVD AX, X0
	VPBROADCASTD X0, Y0
	VPAND Y14, Y0, Y0
	VPCMPEQD Y14, Y0, Y0
	VBLENDVPS Y0, Y13, Y12, Y1
	VMOVUPS Y1, (DI)
	INCQ SI
	ADDQ $32, DI
	DECQ CX
	JMP  u1
uadd:
	TESTQ CX, CX
	JZ   udone
	MOVBLZX (SI), AX
	VMOVD AX, X0
	VPBROADCASTD X0, Y0
	VPAND Y14, Y0, Y0
	VPCMPEQD Y14, Y0, Y0
	VBLENDVPS Y0, Y13, Y12, Y1
	VADDPS (DI), Y1, Y1
	VMOVUPS Y1, (DI)
	INCQ SI
	ADDQ $32, DI
	DECQ CX
	JMP  uadd
udone:
	VZEROUPPER
	RET

// func scanAbsGEAVX2(x *float32, n int, lom1 int32) int
// Returns the offset (a multiple of 32) of the first block of 32 elements
// holding an element with (bits &^ sign) > lom1, or n. n % 32 == 0.
TEXT ·scanAbsGEAVX2(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	MOVL lom1+16(FP), AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14
	VPBROADCASTD bfconst<>+8(SB), Y15
	XORQ AX, AX
s32:
	CMPQ AX, CX
	JAE  sdone
	VPAND (SI), Y15, Y0
	VPAND 32(SI), Y15, Y1
	VPAND 64(SI), Y15, Y2
	VPAND 96(SI), Y15, Y3
	VPCMPGTD Y14, Y0, Y0
	VPCMPGTD Y14, Y1, Y1
	VPCMPGTD Y14, Y2, Y2
	VPCMPGTD Y14, Y3, Y3
	VPOR Y1, Y0, Y0
	VPOR Y3, Y2, Y2
	VPOR Y2, Y0, Y0
	VPTEST Y0, Y0
	JNZ  sdone
	ADDQ $128, SI
	ADDQ $32, AX
	JMP  s32
sdone:
	MOVQ AX, ret+24(FP)
	VZEROUPPER
	RET

DATA qconst<>+0(SB)/4, $0x33800000 // 2^-24
DATA qconst<>+4(SB)/4, $0x7fffffff
GLOBL qconst<>(SB), RODATA|NOPTR, $8

DATA qperm<>+0(SB)/4, $0
DATA qperm<>+4(SB)/4, $4
DATA qperm<>+8(SB)/4, $1
DATA qperm<>+12(SB)/4, $5
DATA qperm<>+16(SB)/4, $2
DATA qperm<>+20(SB)/4, $6
DATA qperm<>+24(SB)/4, $3
DATA qperm<>+28(SB)/4, $7
GLOBL qperm<>(SB), RODATA|NOPTR, $32

DATA qwmask<>+0(SB)/8, $0x00ff00ff00ff00ff
DATA qwmask<>+8(SB)/8, $0x00ff00ff00ff00ff
DATA qwmask<>+16(SB)/8, $0x00ff00ff00ff00ff
DATA qwmask<>+24(SB)/8, $0x00ff00ff00ff00ff
GLOBL qwmask<>(SB), RODATA|NOPTR, $32

// QGROUP quantizes the 8 floats at off(SI) into 4-bit codes (dword lanes of
// OUT), stepping the xorshift128 lanes whose x is RX and w is RW (the new w
// replaces RX). Y0, Y1, Y3, Y6 are scratch.
#define QGROUP(off, RX, RW, OUT) \
	VMOVUPS off(SI), Y0 \
	VPAND Y15, Y0, Y1 \
	VMULPS Y14, Y1, Y1 \
	VCVTTPS2DQ Y1, OUT \
	VCVTDQ2PS OUT, Y3 \
	VSUBPS Y3, Y1, Y1 \
	VPSLLD $11, RX, Y6 \
	VPXOR RX, Y6, Y6 \
	VPSRLD $8, Y6, RX \
	VPXOR Y6, RX, RX \
	VPSRLD $19, RW, Y6 \
	VPXOR Y6, RW, Y6 \
	VPXOR Y6, RX, RX \
	VPSRLD $8, RX, Y3 \
	VCVTDQ2PS Y3, Y3 \
	VMULPS Y13, Y3, Y3 \
	VCMPPS $0x11, Y1, Y3, Y3 \
	VPSUBD Y3, OUT, OUT \
	VPMINUD Y12, OUT, OUT \
	VPSRLD $31, Y0, Y3 \
	VPSLLD $3, Y3, Y3 \
	VPCMPEQD Y7, OUT, Y1 \
	VPANDN Y3, Y1, Y3 \
	VPOR Y3, OUT, OUT

// func qsgd4AVX2(codes *byte, src *float32, n int, sc float32, s uint32, state *[32]uint32)
// n % 32 == 0; writes n/2 bytes of nibble codes (element 2i low nibble).
TEXT ·qsgd4AVX2(SB), NOSPLIT, $0-40
	MOVQ codes+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS sc+24(FP), Y14
	MOVL s+28(FP), AX
	VMOVD AX, X12
	VPBROADCASTD X12, Y12
	VPBROADCASTD qconst<>+0(SB), Y13
	VPBROADCASTD qconst<>+4(SB), Y15
	VPXOR Y7, Y7, Y7
	MOVQ state+32(FP), DX
	VMOVDQU (DX), Y8
	VMOVDQU 32(DX), Y9
	VMOVDQU 64(DX), Y10
	VMOVDQU 96(DX), Y11
q32:
	CMPQ CX, $32
	JB   qdone
	QGROUP(0, Y8, Y11, Y4)
	QGROUP(32, Y9, Y8, Y2)
	VPACKUSDW Y2, Y4, Y4
	QGROUP(64, Y10, Y9, Y5)
	QGROUP(96, Y11, Y10, Y2)
	VPACKUSDW Y2, Y5, Y5
	VPACKUSWB Y5, Y4, Y4
	VMOVDQU qperm<>(SB), Y6
	VPERMD Y4, Y6, Y4
	VPSRLW $4, Y4, Y6
	VPOR Y6, Y4, Y4
	VPAND qwmask<>(SB), Y4, Y4
	VPACKUSWB Y4, Y4, Y4
	VPERMQ $0x08, Y4, Y4
	VMOVDQU X4, (DI)
	ADDQ $128, SI
	ADDQ $16, DI
	SUBQ $32, CX
	JMP  q32
qdone:
	VMOVDQU Y8, (DX)
	VMOVDQU Y9, 32(DX)
	VMOVDQU Y10, 64(DX)
	VMOVDQU Y11, 96(DX)
	VZEROUPPER
	RET

// func addBytesAVX2(dst, a *float32, b *byte, n int): addAVX2 with b given as
// bytes (possibly unaligned; VADDPS takes unaligned memory operands).
TEXT ·addBytesAVX2(SB), NOSPLIT, $0-32
	JMP ·addAVX2(SB)

DATA qdconst<>+0(SB)/4, $15
GLOBL qdconst<>(SB), RODATA|NOPTR, $4

// func qsgdDecode4AVX2(dst *float32, codes *byte, n int, levels *[8]float32, add bool)
// n % 16 == 0. Element 2i is the low nibble of byte i; value =
// ±levels[code&7], negative when code&8.
TEXT ·qsgdDecode4AVX2(SB), NOSPLIT, $0-33
	MOVQ dst+0(FP), DI
	MOVQ codes+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ levels+24(FP), DX
	VMOVUPS (DX), Y15
	VPBROADCASTD qdconst<>+0(SB), Y14
	MOVB add+32(FP), AX
qd16:
	CMPQ CX, $16
	JB   qddone
	VPMOVZXBD (SI), Y0
	VPAND Y14, Y0, Y1
	VPSRLD $4, Y0, Y2
	VPERMPS Y15, Y1, Y3
	VPSRLD $3, Y1, Y4
	VPSLLD $31, Y4, Y4
	VPXOR Y4, Y3, Y3
	VPERMPS Y15, Y2, Y5
	VPSRLD $3, Y2, Y4
	VPSLLD $31, Y4, Y4
	VPXOR Y4, Y5, Y5
	VUNPCKLPS Y5, Y3, Y6
	VUNPCKHPS Y5, Y3, Y7
	VPERM2F128 $0x20, Y7, Y6, Y8
	VPERM2F128 $0x31, Y7, Y6, Y9
	TESTB AL, AL
	JZ   qdstore
	VADDPS (DI), Y8, Y8
	VADDPS 32(DI), Y9, Y9
qdstore:
	VMOVUPS Y8, (DI)
	VMOVUPS Y9, 32(DI)
	ADDQ $8, SI
	ADDQ $64, DI
	SUBQ $16, CX
	JMP  qd16
qddone:
	VZEROUPPER
	RET

// func packSignsSumSqAVX2(dst *byte, src *float32, n int, acc *[16]float64)
// PackSigns and the 16-lane sum of squares (lane l += x[i]² for i ≡ l mod 16)
// in one pass; acc is updated, not combined. n % 32 == 0.
TEXT ·packSignsSumSqAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ acc+24(FP), DX
	VMOVUPD (DX), Y4
	VMOVUPD 32(DX), Y5
	VMOVUPD 64(DX), Y6
	VMOVUPD 96(DX), Y7
	VMOVDQU revidx<>(SB), Y14
	VXORPS Y15, Y15, Y15
ps32:
	CMPQ CX, $32
	JB   psdone
	VCVTPS2PD (SI), Y8
	VCVTPS2PD 16(SI), Y9
	VCVTPS2PD 32(SI), Y10
	VCVTPS2PD 48(SI), Y11
	VFMADD231PD Y8, Y8, Y4
	VFMADD231PD Y9, Y9, Y5
	VFMADD231PD Y10, Y10, Y6
	VFMADD231PD Y11, Y11, Y7
	VCVTPS2PD 64(SI), Y8
	VCVTPS2PD 80(SI), Y9
	VCVTPS2PD 96(SI), Y10
	VCVTPS2PD 112(SI), Y11
	VFMADD231PD Y8, Y8, Y4
	VFMADD231PD Y9, Y9, Y5
	VFMADD231PD Y10, Y10, Y6
	VFMADD231PD Y11, Y11, Y7
	VPERMPS (SI), Y14, Y0
	VPERMPS 32(SI), Y14, Y1
	VPERMPS 64(SI), Y14, Y2
	VPERMPS 96(SI), Y14, Y3
	VCMPPS $0x1D, Y15, Y0, Y0
	VCMPPS $0x1D, Y15, Y1, Y1
	VCMPPS $0x1D, Y15, Y2, Y2
	VCMPPS $0x1D, Y15, Y3, Y3
	VMOVMSKPS Y0, AX
	VMOVMSKPS Y1, BX
	VMOVMSKPS Y2, R9
	VMOVMSKPS Y3, R8
	SHLL $8, BX
	SHLL $16, R9
	SHLL $24, R8
	ORL  BX, AX
	ORL  R9, AX
	ORL  R8, AX
	MOVL AX, (DI)
	ADDQ $128, SI
	ADDQ $4, DI
	SUBQ $32, CX
	JMP  ps32
psdone:
	VMOVUPD Y4, (DX)
	VMOVUPD Y5, 32(DX)
	VMOVUPD Y6, 64(DX)
	VMOVUPD Y7, 96(DX)
	VZEROUPPER
	RET

// Shuffles of the 24-bit word layout (per 128-bit lane).
// pack24: dwords -> 12 bytes (low three bytes of each), 4 zero bytes.
DATA pack24<>+0(SB)/8, $0x0908060504020100
DATA pack24<>+8(SB)/8, $0x808080800e0d0c0a
DATA pack24<>+16(SB)/8, $0x0908060504020100
DATA pack24<>+24(SB)/8, $0x808080800e0d0c0a
GLOBL pack24<>(SB), RODATA|NOPTR, $32
// unpack24: 12 bytes -> dwords (zero high byte).
DATA unpack24<>+0(SB)/8, $0x8005040380020100
DATA unpack24<>+8(SB)/8, $0x800b0a0980080706
DATA unpack24<>+16(SB)/8, $0x8005040380020100
DATA unpack24<>+24(SB)/8, $0x800b0a0980080706
GLOBL unpack24<>(SB), RODATA|NOPTR, $32
// packexp: byte 0 of each dword -> the low 4 bytes of the lane.
DATA packexp<>+0(SB)/8, $0x808080800c080400
DATA packexp<>+8(SB)/8, $0x8080808080808080
DATA packexp<>+16(SB)/8, $0x808080800c080400
DATA packexp<>+24(SB)/8, $0x8080808080808080
GLOBL packexp<>(SB), RODATA|NOPTR, $32
DATA c24<>+0(SB)/4, $0x007fffff
DATA c24<>+4(SB)/4, $0x00800000
GLOBL c24<>(SB), RODATA|NOPTR, $8

// func splitF32AVX2(words, exp *byte, src *float32, n int)   n % 8 == 0;
// writes 4 bytes past words[3n-1] (overwritten by the caller's tail).
TEXT ·splitF32AVX2(SB), NOSPLIT, $0-32
	MOVQ words+0(FP), DI
	MOVQ exp+8(FP), BX
	MOVQ src+16(FP), SI
	MOVQ n+24(FP), CX
	VMOVDQU pack24<>(SB), Y10
	VMOVDQU packexp<>(SB), Y11
	VPBROADCASTD c24<>+0(SB), Y12
	VPBROADCASTD c24<>+4(SB), Y13
sp8:
	CMPQ CX, $8
	JB   spdone
	VMOVDQU (SI), Y0
	VPSRLD $23, Y0, Y1
	VPSHUFB Y11, Y1, Y1
	VEXTRACTI128 $1, Y1, X2
	VPUNPCKLDQ X2, X1, X1
	VMOVQ X1, (BX)
	VPAND Y12, Y0, Y3
	VPSRLD $8, Y0, Y4
	VPAND Y13, Y4, Y4
	VPOR Y4, Y3, Y3
	VPSHUFB Y10, Y3, Y3
	VMOVDQU X3, (DI)
	VEXTRACTI128 $1, Y3, 12(DI)
	ADDQ $32, SI
	ADDQ $8, BX
	ADDQ $24, DI
	SUBQ $8, CX
	JMP  sp8
spdone:
	VZEROUPPER
	RET

// func mergeF32AVX2(dst *float32, words, exp *byte, n int, add bool)   n % 8 == 0;
// reads 4 bytes past words[3n-1].
TEXT ·mergeF32AVX2(SB), NOSPLIT, $0-33
	MOVQ dst+0(FP), DI
	MOVQ words+8(FP), SI
	MOVQ exp+16(FP), BX
	MOVQ n+24(FP), CX
	MOVB add+32(FP), AX
	VMOVDQU unpack24<>(SB), Y10
	VPBROADCASTD c24<>+0(SB), Y12
	VPBROADCASTD c24<>+4(SB), Y13
	TESTB AL, AL
	JNZ  madd8
m8:
	CMPQ CX, $8
	JB   mdone
	VMOVDQU (SI), X0
	VINSERTI128 $1, 12(SI), Y0, Y0
	VPSHUFB Y10, Y0, Y0
	VPAND Y12, Y0, Y1
	VPAND Y13, Y0, Y2
	VPSLLD $8, Y2, Y2
	VPOR Y2, Y1, Y1
	VPMOVZXBD (BX), Y3
	VPSLLD $23, Y3, Y3
	VPOR Y3, Y1, Y1
	VMOVDQU Y1, (DI)
	ADDQ $24, SI
	ADDQ $8, BX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  m8
madd8:
	CMPQ CX, $8
	JB   mdone
	VMOVDQU (SI), X0
	VINSERTI128 $1, 12(SI), Y0, Y0
	VPSHUFB Y10, Y0, Y0
	VPAND Y12, Y0, Y1
	VPAND Y13, Y0, Y2
	VPSLLD $8, Y2, Y2
	VPOR Y2, Y1, Y1
	VPMOVZXBD (BX), Y3
	VPSLLD $23, Y3, Y3
	VPOR Y3, Y1, Y1
	VADDPS (DI), Y1, Y1
	VMOVUPS Y1, (DI)
	ADDQ $24, SI
	ADDQ $8, BX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP  madd8
mdone:
	VZEROUPPER
	RET

// func allFiniteAVX2(x *float32, n int) bool   n % 8 == 0
// Whether no element of x[:n] has all its exponent bits set (NaN or ±Inf).
TEXT ·allFiniteAVX2(SB), NOSPLIT, $0-17
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	MOVL $0x7f800000, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	VPXOR Y5, Y5, Y5
af32:
	CMPQ CX, $32
	JB   af8
	VPAND (SI), Y15, Y0
	VPAND 32(SI), Y15, Y1
	VPAND 64(SI), Y15, Y2
	VPAND 96(SI), Y15, Y3
	VPCMPEQD Y15, Y0, Y0
	VPCMPEQD Y15, Y1, Y1
	VPCMPEQD Y15, Y2, Y2
	VPCMPEQD Y15, Y3, Y3
	VPOR Y1, Y0, Y0
	VPOR Y3, Y2, Y2
	VPOR Y2, Y0, Y0
	VPTEST Y0, Y0
	JNZ  afbad
	ADDQ $128, SI
	SUBQ $32, CX
	JMP  af32
af8:
	CMPQ CX, $8
	JB   afdone
	VPAND (SI), Y15, Y0
	VPCMPEQD Y15, Y0, Y0
	VPOR Y0, Y5, Y5
	ADDQ $32, SI
	SUBQ $8, CX
	JMP  af8
afdone:
	VPTEST Y5, Y5
	SETEQ ret+16(FP)
	VZEROUPPER
	RET
afbad:
	MOVB $0, ret+16(FP)
	VZEROUPPER
	RET
