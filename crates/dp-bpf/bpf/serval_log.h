/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sv_log: bpf_printk of a decision in the debug build (-DSERVAL_DEBUG, read with `bpftool
 * prog tracelog`), nothing in the plain one. Define SV_LOG_PREFIX (the object's tag, a string
 * literal) before including this header.
 */
#ifndef SERVAL_LOG_H
#define SERVAL_LOG_H

#ifndef SV_LOG_PREFIX
#error "define SV_LOG_PREFIX before including serval_log.h"
#endif

#ifdef SERVAL_DEBUG
#define sv_log(fmt, ...) bpf_printk(SV_LOG_PREFIX fmt, ##__VA_ARGS__)
#else
#define sv_log(fmt, ...)                                                                           \
	do {                                                                                       \
	} while (0)
#endif

#endif /* SERVAL_LOG_H */
