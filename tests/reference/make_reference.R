# Reference fits from nlme and lme4 for jaxlmm's comparison tests.
#
# Run from the repository root (after `python tests/reference/make_data.py`):
#
#     Rscript tests/reference/make_reference.R
#
# Reads tests/reference/data/<name>.csv, fits nlme::gls / lme4::lmer / nlme::lme models and
# writes tests/reference/reference.json.  Besides what R reports, every case carries a
# -2 log-likelihood recomputed here with a dense textbook formula from the fitted marginal
# covariance, so that the constants used by nlme/lme4 are documented (see README.md).

suppressPackageStartupMessages({
  library(nlme)
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
ref_dir <- if (length(args) >= 1) args[1] else file.path("tests", "reference")
data_dir <- file.path(ref_dir, "data")
out_path <- file.path(ref_dir, "reference.json")

# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------

# Matrix -> list of rows; I() keeps 1-element rows/arrays as JSON arrays under auto_unbox.
rows <- function(M) {
  M <- as.matrix(M)
  lapply(seq_len(nrow(M)), function(i) I(unname(as.numeric(M[i, ]))))
}
named <- function(v) as.list(setNames(as.numeric(v), names(v)))
arr <- function(v) I(unname(v))

read_ds <- function(name) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  n_rows <- nrow(d)
  # factors with sorted levels, made on the full data (before dropping missing y)
  d$visit <- factor(d$visit)
  d$arm <- factor(d$arm)
  d$sex <- factor(d$sex)
  d$vi <- as.integer(d$visit)
  # explicit na.omit of rows with missing response
  d <- d[!is.na(d$y), , drop = FALSE]
  d$subject <- factor(d$subject)
  d <- d[order(d$subject, d$vi), , drop = FALSE]
  rownames(d) <- NULL
  stopifnot(all(table(d$visit) > 0))
  attr(d, "n_rows_csv") <- n_rows
  d
}

# Run expr, collecting warnings and messages instead of printing them.
capture <- function(expr) {
  warns <- character(0)
  msgs <- character(0)
  val <- withCallingHandlers(
    tryCatch(expr, error = function(e) e),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
  list(value = val, warnings = warns, messages = msgs)
}

# Dense -2 log L from per-subject marginal covariances V_i.
# ML:   sum log det V_i + r' V^-1 r + N log(2 pi)
# REML: ML + log det(X' V^-1 X) - p log(2 pi)    (r from the GLS beta)
dense_terms <- function(d, X, Vlist, beta) {
  N <- nrow(X)
  p <- ncol(X)
  idx <- split(seq_len(N), d$subject)
  ld <- 0
  XtVX <- matrix(0, p, p)
  XtVy <- numeric(p)
  quad <- 0
  r <- d$y - drop(X %*% beta)
  for (s in names(idx)) {
    ii <- idx[[s]]
    Vi <- Vlist[[s]]
    ch <- chol(Vi)
    ld <- ld + 2 * sum(log(diag(ch)))
    Xi <- X[ii, , drop = FALSE]
    W <- backsolve(ch, forwardsolve(t(ch), cbind(Xi, d$y[ii], r[ii])))
    XtVX <- XtVX + crossprod(Xi, W[, 1:p, drop = FALSE])
    XtVy <- XtVy + drop(crossprod(Xi, W[, p + 1]))
    quad <- quad + sum(r[ii] * W[, p + 2])
  }
  beta_gls <- drop(solve(XtVX, XtVy))
  names(beta_gls) <- colnames(X)
  ldX <- as.numeric(determinant(XtVX, logarithm = TRUE)$modulus)
  ldXtX <- as.numeric(determinant(crossprod(X), logarithm = TRUE)$modulus)
  dev_ml <- ld + quad + N * log(2 * pi)
  dev_reml <- dev_ml + ldX - p * log(2 * pi)
  V_beta <- solve(XtVX)
  dimnames(V_beta) <- list(colnames(X), colnames(X))
  list(
    N = N, p = p, logdet_V = ld, quad = quad, logdet_XtVinvX = ldX, logdet_XtX = ldXtX,
    dev_ml = dev_ml, dev_reml = dev_reml, beta_gls = beta_gls, vcov = V_beta
  )
}

dense_block <- function(dt, reml, dev_reported) {
  dd <- if (reml) dt$dev_reml else dt$dev_ml
  list(
    deviance_dense = dd,
    deviance_diff = dev_reported - dd,
    dense_terms = list(
      N = dt$N, p = dt$p, logdet_V = dt$logdet_V, quad = dt$quad,
      logdet_XtVinvX = dt$logdet_XtVinvX, logdet_XtX = dt$logdet_XtX,
      deviance_ml_dense = dt$dev_ml, deviance_reml_dense = dt$dev_reml
    )
  )
}

design <- function(fixed, d, coef_names) {
  X <- model.matrix(fixed, d)
  stopifnot(setequal(colnames(X), coef_names))
  X[, coef_names, drop = FALSE]
}

# ----------------------------------------------------------------------------------------
# nlme::gls
# ----------------------------------------------------------------------------------------

gls_structs <- function(struct) {
  switch(struct,
    un   = list(cor = corSymm(form = ~ vi | subject), var = varIdent(form = ~ 1 | visit)),
    cs   = list(cor = corCompSymm(form = ~ 1 | subject), var = NULL),
    csh  = list(cor = corCompSymm(form = ~ 1 | subject), var = varIdent(form = ~ 1 | visit)),
    ar1  = list(cor = corAR1(form = ~ vi | subject), var = NULL),
    arh1 = list(cor = corAR1(form = ~ vi | subject), var = varIdent(form = ~ 1 | visit)),
    stop("unknown structure ", struct)
  )
}

# Full T x T residual covariance from the fitted gls/lme structures.
struct_cov <- function(sigma, cs, vs, visits) {
  T <- length(visits)
  C <- diag(T)
  if (inherits(cs, "corSymm")) {
    C[lower.tri(C)] <- coef(cs, unconstrained = FALSE)
    C[upper.tri(C)] <- t(C)[upper.tri(C)]
  } else if (inherits(cs, "corCompSymm")) {
    C[] <- coef(cs, unconstrained = FALSE)
    diag(C) <- 1
  } else if (inherits(cs, "corAR1") ||
             (inherits(cs, "corARMA") && length(coef(cs, unconstrained = FALSE)) == 1)) {
    # nlme silently turns corAR1 into corARMA(p=1, q=0) when positions have gaps
    C <- as.numeric(coef(cs, unconstrained = FALSE))^abs(outer(seq_len(T), seq_len(T), "-"))
  } else if (!is.null(cs)) {
    stop("unsupported corStruct")
  }
  sds <- rep(sigma, T)
  if (!is.null(vs)) {
    w <- coef(vs, unconstrained = FALSE, allCoef = TRUE)
    sds <- sigma * unname(w[visits])
  }
  C * outer(sds, sds)
}

gls_ctrl <- function(opt = "nlminb") {
  glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-14,
             opt = opt, optimMethod = "BFGS", returnObject = TRUE)
}

run_gls <- function(dsname, d, struct, reml, fixed, fixed_txt) {
  method <- if (reml) "REML" else "ML"
  st <- gls_structs(struct)
  visits <- levels(d$visit)
  T <- length(visits)
  warns <- character(0)
  attempts <- list()

  do_fit <- function(cor, var, opt) {
    capture(gls(fixed, data = d, correlation = cor, weights = var, method = method,
                control = gls_ctrl(opt)))
  }
  # 1. default start, nlminb
  r1 <- do_fit(st$cor, st$var, "nlminb")
  fits <- list()
  if (!inherits(r1$value, "error")) {
    fits$nlminb <- r1
  } else {
    warns <- c(warns, paste("nlminb failed:", conditionMessage(r1$value)))
    r1 <- do_fit(st$cor, st$var, "optim")
    if (inherits(r1$value, "error")) stop("gls failed: ", conditionMessage(r1$value))
    fits$optim <- r1
  }
  base <- fits[[1]]$value
  # 2. polish: restart from the fitted structures with nlminb and with optim(BFGS)
  for (opt in c("nlminb", "optim")) {
    lab <- paste0(opt, "_restart")
    rr <- do_fit(base$modelStruct$corStruct, base$modelStruct$varStruct, opt)
    if (inherits(rr$value, "error")) {
      warns <- c(warns, paste(lab, "failed:", conditionMessage(rr$value)))
    } else {
      fits[[lab]] <- rr
    }
  }
  devs <- sapply(fits, function(r) -2 * as.numeric(logLik(r$value)))
  best <- names(which.min(devs))
  fit <- fits[[best]]$value
  warns <- c(warns, unlist(lapply(fits, `[[`, "warnings")))
  fixef_spread <- max(sapply(fits, function(r) max(abs(coef(r$value) - coef(fit)))))

  cs <- fit$modelStruct$corStruct
  vs <- fit$modelStruct$varStruct
  Sigma <- struct_cov(fit$sigma, cs, vs, visits)
  dimnames(Sigma) <- list(visits, visits)
  # check against getVarCov for a subject with all visits
  full <- names(which(table(d$subject) == T))
  check <- NA
  if (length(full) > 0) {
    gv <- unclass(getVarCov(fit, individual = full[1]))
    check <- max(abs(gv - Sigma))
  }
  subj_idx <- split(d$vi, d$subject)
  Vlist <- lapply(subj_idx, function(v) Sigma[v, v, drop = FALSE])
  beta <- coef(fit)
  X <- design(fixed, d, names(beta))
  dt <- dense_terms(d, X, Vlist, beta)
  dev_rep <- -2 * as.numeric(logLik(fit))
  N <- nrow(d)
  p <- length(beta)
  se <- sqrt(diag(vcov(fit)))
  se_dense <- sqrt(diag(dt$vcov))

  out <- list(
    case = sprintf("gls_%s_%s_%s", struct, tolower(method), dsname),
    dataset = paste0(dsname, ".csv"),
    engine = "nlme::gls",
    r_call = sprintf("gls(%s, correlation=%s, weights=%s, method='%s')",
                     fixed_txt,
                     switch(struct, un = "corSymm(form=~vi|subject)",
                            cs = , csh = "corCompSymm(form=~1|subject)",
                            ar1 = , arh1 = "corAR1(form=~vi|subject)"),
                     if (is.null(st$var)) "NULL" else "varIdent(form=~1|visit)",
                     method),
    jaxlmm_formula = sprintf("%s + %s(visit | subject)", fixed_txt, struct),
    structure = struct,
    reml = reml,
    n_obs = N,
    n_subjects = nlevels(d$subject),
    n_fixef = p,
    deviance_reported = dev_rep
  )
  out <- c(out, dense_block(dt, reml, dev_rep))
  out$fixef <- named(beta)
  out$fixef_dense_gls <- named(dt$beta_gls)
  out$se <- named(se)
  if (!reml) out$se_unscaled <- named(se * sqrt((N - p) / N))
  out$se_dense <- named(se_dense)
  out$se_ratio_reported_over_dense <- named(se / se_dense)
  out$visits <- arr(visits)
  out$residual_cov <- rows(Sigma)
  out$residual_cov_check_getVarCov <- check
  out$nlme_params <- list(
    sigma = fit$sigma,
    cor = arr(as.numeric(coef(cs, unconstrained = FALSE))),
    var_ratios = if (is.null(vs)) NULL else named(coef(vs, unconstrained = FALSE, allCoef = TRUE))
  )
  out$optimizer <- list(
    chosen = best,
    deviance_by_attempt = as.list(devs),
    max_abs_fixef_diff_between_attempts = fixef_spread,
    control = "glsControl(maxIter=500, msMaxIter=500, tolerance=1e-10, msTol=1e-14, returnObject=TRUE); restarts from the fitted structures with opt='nlminb' and opt='optim' (BFGS); lowest deviance kept"
  )
  out$warnings <- arr(unique(warns))
  out
}

# ----------------------------------------------------------------------------------------
# lme4::lmer
# ----------------------------------------------------------------------------------------

re_specs <- list(
  int = "(1 | subject)",
  slope = "(0 + time | subject)",
  intslope = "(time | subject)",
  intslope_uncorr = "(time || subject)"
)

lmer_G <- function(fit) {
  vc <- VarCorr(fit)
  blocks <- lapply(vc, function(m) {
    m <- as.matrix(m)
    attributes(m) <- attributes(m)[c("dim", "dimnames")]
    m
  })
  nm <- unlist(lapply(blocks, colnames))
  G <- matrix(0, length(nm), length(nm), dimnames = list(nm, nm))
  for (b in blocks) G[colnames(b), colnames(b)] <- b
  G
}

zcols <- function(d, nm) {
  Z <- sapply(nm, function(k) if (k == "(Intercept)") rep(1, nrow(d)) else d[[k]])
  matrix(Z, nrow = nrow(d), dimnames = list(NULL, nm))
}

run_lmer <- function(dsname, d, re, reml) {
  fixed_txt <- "y ~ time + arm + x"
  form <- as.formula(paste(fixed_txt, "+", re_specs[[re]]))
  r <- capture(lmer(form, data = d, REML = reml,
                    control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))))
  if (inherits(r$value, "error")) stop("lmer failed: ", conditionMessage(r$value))
  fit <- r$value
  G <- lmer_G(fit)
  nm <- colnames(G)
  sig <- sigma(fit)
  beta <- fixef(fit)
  X <- design(y ~ time + arm + x, d, names(beta))
  idx <- split(seq_len(nrow(d)), d$subject)
  Zl <- lapply(idx, function(ii) zcols(d[ii, , drop = FALSE], nm))
  Vlist <- lapply(Zl, function(Z) Z %*% G %*% t(Z) + diag(sig^2, nrow(Z)))
  dt <- dense_terms(d, X, Vlist, beta)
  dev_rep <- -2 * as.numeric(logLik(fit))

  # BLUPs and conditional SDs as lme4 reports them
  rdf <- as.data.frame(ranef(fit, condVar = TRUE))
  subj <- levels(d$subject)
  get_vals <- function(col) {
    setNames(lapply(subj, function(s) {
      I(sapply(nm, function(k) rdf[[col]][rdf$grp == s & rdf$term == k]))
    }), subj)
  }
  ranef_v <- get_vals("condval")
  ranef_sd <- get_vals("condsd")
  # dense versions: b_i = G Z' V^-1 r_i ;  Var(b_i | y, beta) = G - G Z' V^-1 Z G
  res <- d$y - drop(X %*% beta)
  blup_dense <- list()
  csd_dense <- list()
  for (s in subj) {
    Z <- Zl[[s]]
    Vi <- Vlist[[s]]
    GZ <- G %*% t(Z)
    blup_dense[[s]] <- drop(GZ %*% solve(Vi, res[idx[[s]]]))
    csd_dense[[s]] <- sqrt(pmax(diag(G - GZ %*% solve(Vi, t(GZ))), 0))
  }
  blup_diff <- max(abs(unlist(lapply(subj, function(s) as.numeric(ranef_v[[s]]) - blup_dense[[s]]))))
  csd_diff <- max(abs(unlist(lapply(subj, function(s) as.numeric(ranef_sd[[s]]) - csd_dense[[s]]))))

  se <- sqrt(diag(as.matrix(vcov(fit))))
  names(se) <- names(beta)
  se_dense <- sqrt(diag(dt$vcov))
  conv <- fit@optinfo$conv
  # cross-check the optimum with other optimizers (the bobyqa fit stays the reference)
  alt <- list(bobyqa = dev_rep)
  for (o in c("Nelder_Mead", "nloptwrap")) {
    ra <- capture(lmer(form, data = d, REML = reml,
                       control = lmerControl(optimizer = o, optCtrl = list(maxfun = 1e5))))
    alt[[o]] <- if (inherits(ra$value, "error")) NA else -2 * as.numeric(logLik(ra$value))
  }
  out <- list(
    case = sprintf("lmer_%s_%s_%s", re, if (reml) "reml" else "ml", dsname),
    dataset = paste0(dsname, ".csv"),
    engine = "lme4::lmer",
    r_call = sprintf("lmer(%s + %s, REML=%s)", fixed_txt, re_specs[[re]], reml),
    jaxlmm_formula = paste(fixed_txt, "+", re_specs[[re]]),
    random = re,
    reml = reml,
    n_obs = nrow(d),
    n_subjects = nlevels(d$subject),
    n_fixef = length(beta),
    deviance_reported = dev_rep
  )
  out <- c(out, dense_block(dt, reml, dev_rep))
  out$deviance_lme4 <- if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit))
  out$fixef <- named(beta)
  out$fixef_dense_gls <- named(dt$beta_gls)
  out$se <- named(se)
  out$se_dense <- named(se_dense)
  out$se_ratio_reported_over_dense <- named(se / se_dense)
  out$visits <- arr(levels(d$visit))
  out$residual_cov <- rows(diag(sig^2, nlevels(d$visit)))
  out$G <- rows(G)
  out$G_names <- arr(nm)
  out$sigma <- sig
  out$theta <- arr(as.numeric(getME(fit, "theta")))
  out$theta_names <- arr(names(getME(fit, "theta")))
  out$ranef_subjects <- arr(subj)
  out$ranef <- ranef_v
  out$ranef_condsd <- ranef_sd
  out$ranef_check <- list(max_abs_diff_blup_vs_dense = blup_diff,
                          max_abs_diff_condsd_vs_dense = csd_diff)
  out$singular <- isSingular(fit)
  out$optimizer <- list(
    name = "bobyqa", maxfun = 1e5,
    feval = fit@optinfo$feval,
    deviance_by_optimizer = alt,
    optimizer_message = if (is.null(fit@optinfo$message)) "" else as.character(fit@optinfo$message),
    lme4_messages = arr(as.character(unlist(conv$lme4$messages))),
    lme4_code = arr(as.integer(unlist(conv$lme4$code)))
  )
  out$warnings <- arr(unique(c(r$warnings, fit@optinfo$warnings)))
  out$messages <- arr(unique(r$messages))
  out
}

# ----------------------------------------------------------------------------------------
# nlme::lme (random intercept + AR(1) residual)
# ----------------------------------------------------------------------------------------

run_lme <- function(dsname, d, reml) {
  method <- if (reml) "REML" else "ML"
  ctrl <- lmeControl(maxIter = 500, msMaxIter = 500, msMaxEval = 5000, tolerance = 1e-10,
                     msTol = 1e-14, niterEM = 100, returnObject = TRUE)
  r <- capture(lme(y ~ time + arm + x, random = ~ 1 | subject,
                   correlation = corAR1(form = ~ vi | subject),
                   data = d, method = method, control = ctrl))
  opt_used <- "nlminb"
  warns <- r$warnings
  if (inherits(r$value, "error")) {
    warns <- c(warns, paste("nlminb failed:", conditionMessage(r$value)))
    ctrl$opt <- "optim"
    r <- capture(lme(y ~ time + arm + x, random = ~ 1 | subject,
                     correlation = corAR1(form = ~ vi | subject),
                     data = d, method = method, control = ctrl))
    if (inherits(r$value, "error")) stop("lme failed: ", conditionMessage(r$value))
    opt_used <- "optim"
    warns <- c(warns, r$warnings)
  }
  fit <- r$value
  visits <- levels(d$visit)
  T <- length(visits)
  sig <- fit$sigma
  cs <- fit$modelStruct$corStruct
  phi <- as.numeric(coef(cs, unconstrained = FALSE))
  R <- struct_cov(sig, cs, NULL, visits)
  dimnames(R) <- list(visits, visits)
  G <- unclass(getVarCov(fit))
  G <- matrix(G, nrow(G), ncol(G), dimnames = list(colnames(G), colnames(G)))
  g <- G[1, 1]
  subj_idx <- split(d$vi, d$subject)
  Vlist <- lapply(subj_idx, function(v) g + R[v, v, drop = FALSE])
  full <- names(which(table(d$subject) == T))
  check <- NA
  if (length(full) > 0) {
    gv <- getVarCov(fit, individuals = full[1], type = "marginal")[[1]]
    check <- max(abs(unclass(gv) - (g + R)))
  }
  beta <- fixef(fit)
  X <- design(y ~ time + arm + x, d, names(beta))
  dt <- dense_terms(d, X, Vlist, beta)
  dev_rep <- -2 * as.numeric(logLik(fit))
  se <- sqrt(diag(vcov(fit)))
  se_dense <- sqrt(diag(dt$vcov))
  re <- ranef(fit)
  subj <- levels(d$subject)
  out <- list(
    case = sprintf("lme_int_ar1_%s_%s", tolower(method), dsname),
    dataset = paste0(dsname, ".csv"),
    engine = "nlme::lme",
    r_call = sprintf("lme(y ~ time + arm + x, random=~1|subject, correlation=corAR1(form=~vi|subject), method='%s')", method),
    jaxlmm_formula = "y ~ time + arm + x + (1 | subject) + ar1(visit | subject)",
    reml = reml,
    n_obs = nrow(d),
    n_subjects = nlevels(d$subject),
    n_fixef = length(beta),
    deviance_reported = dev_rep
  )
  out <- c(out, dense_block(dt, reml, dev_rep))
  out$fixef <- named(beta)
  out$fixef_dense_gls <- named(dt$beta_gls)
  out$se <- named(se)
  out$se_dense <- named(se_dense)
  out$se_ratio_reported_over_dense <- named(se / se_dense)
  out$visits <- arr(visits)
  out$residual_cov <- rows(R)
  out$marginal_cov_check_getVarCov <- check
  out$G <- rows(G)
  out$G_names <- arr(colnames(G))
  out$sigma <- sig
  out$rho <- phi
  out$ranef_subjects <- arr(subj)
  out$ranef <- setNames(lapply(subj, function(s) I(as.numeric(re[s, ]))), subj)
  out$optimizer <- list(
    chosen = opt_used,
    control = "lmeControl(maxIter=500, msMaxIter=500, msMaxEval=5000, tolerance=1e-10, msTol=1e-14, niterEM=100)"
  )
  out$warnings <- arr(unique(warns))
  out
}

# ----------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------

cases <- list()
add <- function(x) {
  cases[[length(cases) + 1]] <<- x
  cat(sprintf("%-40s dev=%.10f dense_diff=%+.3e %s\n", x$case, x$deviance_reported,
              x$deviance_diff, if (length(x$warnings)) paste("WARN:", paste(x$warnings, collapse = "; ")) else ""))
}

gls_sets <- c("balanced", "monotone", "intermittent", "unequal", "cs_negative", "ar1_strong", "factor3")
for (ds in gls_sets) {
  d <- read_ds(ds)
  if (ds == "factor3") {
    fixed <- y ~ visit * arm + x
    fixed_txt <- "y ~ visit * arm + x"
  } else {
    fixed <- y ~ time * arm + x
    fixed_txt <- "y ~ time * arm + x"
  }
  for (struct in c("un", "cs", "csh", "ar1", "arh1")) {
    for (reml in c(TRUE, FALSE)) add(run_gls(ds, d, struct, reml, fixed, fixed_txt))
  }
}
d <- read_ds("un8")
for (reml in c(TRUE, FALSE)) add(run_gls("un8", d, "un", reml, y ~ visit + arm + x, "y ~ visit + arm + x"))

for (ds in c("re_slope", "re_boundary")) {
  d <- read_ds(ds)
  for (re in names(re_specs)) {
    for (reml in c(TRUE, FALSE)) add(run_lmer(ds, d, re, reml))
  }
}

d <- read_ds("re_ar1")
for (reml in c(TRUE, FALSE)) add(run_lme("re_ar1", d, reml))

si <- sessionInfo()
versions <- list(
  R = paste(R.version$major, R.version$minor, sep = "."),
  R_string = R.version.string,
  platform = R.version$platform,
  nlme = as.character(packageVersion("nlme")),
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix")),
  jsonlite = as.character(packageVersion("jsonlite")),
  BLAS = if (!is.null(si$BLAS)) si$BLAS else "",
  generated = format(Sys.time(), "%Y-%m-%d", tz = "UTC")
)
ids <- vapply(cases, `[[`, "", "case")
stopifnot(!anyDuplicated(ids))
out <- list(
  `_versions` = versions,
  `_notes` = list(
    deviance = "deviance_reported = -2*logLik(fit) as R reports it; deviance_dense = textbook -2 log L recomputed from the fitted V and beta: ML = sum log det V_i + r'V^-1 r + N log(2 pi); REML = ML + log det(X'V^-1X) - p log(2 pi). deviance_diff = reported - dense.",
    se = "se = sqrt(diag(vcov(fit))) as R reports; se_dense = sqrt(diag((X'V^-1X)^-1)) at the fitted V; for gls ML also se_unscaled = se*sqrt((N-p)/N).",
    matrices = "matrices are lists of rows; residual_cov rows/cols follow 'visits'; G rows/cols follow 'G_names'; ranef maps subject -> values in G_names order",
    data = "factors: visit, arm, sex, subject with sorted levels; rows with missing y dropped before fitting; vi = as.integer(visit)"
  ),
  cases = cases
)
write_json(out, out_path, auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat("wrote", out_path, "with", length(cases), "cases\n")
