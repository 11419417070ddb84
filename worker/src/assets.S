/*
 * assets.S
 *	  The dashboard's files, built into tqd (dashboard.c serves them).
 *	  Each is followed by a NUL that is not part of it; NAME_end marks the
 *	  byte after that NUL.  Paths are relative to worker/, where make runs.
 */
	.section .rodata

	.global tqd_asset_html
	.global tqd_asset_html_end
tqd_asset_html:
	.incbin "src/dashboard/index.html"
	.byte 0
tqd_asset_html_end:

	.global tqd_asset_js
	.global tqd_asset_js_end
tqd_asset_js:
	.incbin "src/dashboard/dashboard.js"
	.byte 0
tqd_asset_js_end:

	.global tqd_asset_css
	.global tqd_asset_css_end
tqd_asset_css:
	.incbin "src/dashboard/dashboard.css"
	.byte 0
tqd_asset_css_end:

	.section .note.GNU-stack,"",@progbits
