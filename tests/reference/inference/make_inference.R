# Inference reference numbers from R for jaxlmm's comparison tests:
# Satterthwaite / Kenward-Roger df, KR-adjusted covariance, contrasts and F tests, Type III
# ANOVA, LS-means (emmeans), cluster-robust sandwich covariances (CR0 / CR2), profile-likelihood
# and Wald intervals, likelihood-ratio tests (with chi-bar-square mixture p-values).
#
# Run from the repository root:
#
#     Rscript tests/reference/inference/make_inference.R
#
# Reads tests/reference/data/<name>.csv and writes tests/reference/inference/inference.json.
# Needs lme4, lmerTest, pbkrtest, emmeans, clubSandwich, nlme, jsonlite (Debian r-cran-*).
# mmrm is optional: when it is installed the mmrm cases are added, otherwise they are listed
# under `_unavailable` and skipped.  See README.md in this folder.

suppressPackageStartupMessages({
  library(nlme)
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(emmeans)
  library(clubSandwich)
  library(jsonlite)
})
have_mmrm <- requireNamespace("mmrm", quietly = TRUE)
if (have_mmrm) suppressPackageStartupMessages(library(mmrm))

args <- commandArgs(trailingOnly = TRUE)
ref_dir <- if (length(args) >= 1) args[1] else file.path("tests", "reference")
data_dir <- file.path(ref_dir, "data")
out_path <- file.path(ref_dir, "inference", "inference.json")

emm_options(msg.interaction = FALSE)
# lmerTest builds Type III hypothesis matrices with zapsmall(), which rounds to getOption("digits")
# significant digits (7 by default: 1/3 becomes 0.3333333).  15 digits keeps them exact enough
# that the F statistics are not perturbed at the 1e-7 level.  Only printing is otherwise affected.
options(digits = 15)

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
num <- function(v) I(unname(as.numeric(v)))

read_ds <- function(name) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  d$visit <- factor(d$visit)
  d$arm <- factor(d$arm)
  d$sex <- factor(d$sex)
  d$vi <- as.integer(d$visit)
  d <- d[!is.na(d$y), , drop = FALSE]
  d$subject <- factor(d$subject)
  d <- d[order(d$subject, d$vi), , drop = FALSE]
  rownames(d) <- NULL
  d
}
DATA <- list()
get_ds <- function(name) {
  if (is.null(DATA[[name]])) DATA[[name]] <<- read_ds(name)
  DATA[[name]]
}

# Run expr, collecting warnings and messages instead of printing them.
capture <- function(expr) {
  warns <- character(0)
  msgs <- character(0)
  val <- withCallingHandlers(
    expr,
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
  list(value = val, warnings = arr(warns), messages = arr(msgs))
}

# Build an L matrix (rows) from named coefficient weights; cn = coefficient names.
Lmat <- function(cn, ...) {
  specs <- list(...)
  L <- matrix(0, length(specs), length(cn), dimnames = list(NULL, cn))
  for (i in seq_along(specs)) {
    s <- specs[[i]]
    stopifnot(all(names(s) %in% cn))
    L[i, names(s)] <- s
  }
  L
}

# summary()$coefficients-like matrix -> columnar table
coef_table <- function(M) {
  M <- as.matrix(M)
  cols <- colnames(M)
  pick <- function(...) {
    for (n in c(...)) if (n %in% cols) return(num(M[, n]))
    NULL
  }
  out <- list(
    names = arr(rownames(M)),
    estimate = pick("Estimate"),
    se = pick("Std. Error"),
    df = pick("df"),
    t = pick("t value"),
    p = pick("Pr(>|t|)")
  )
  out[!vapply(out, is.null, TRUE)]
}

anova_table <- function(a) {
  a <- as.data.frame(a)
  list(
    terms = arr(rownames(a)),
    sum_sq = num(a[["Sum Sq"]]),
    mean_sq = num(a[["Mean Sq"]]),
    num_df = num(a[["NumDF"]]),
    den_df = num(a[["DenDF"]]),
    F = num(a[["F value"]]),
    p = num(a[["Pr(>F)"]])
  )
}

mat_named <- function(M) list(names = arr(rownames(M)), matrix = rows(M))

versions <- function() {
  pv <- function(p) if (requireNamespace(p, quietly = TRUE)) utils::packageDescription(p)$Version else NULL
  si <- sessionInfo()
  v <- list(
    R = paste(R.version$major, R.version$minor, sep = "."),
    R_string = R.version.string,
    platform = R.version$platform,
    lme4 = pv("lme4"), lmerTest = pv("lmerTest"), pbkrtest = pv("pbkrtest"),
    emmeans = pv("emmeans"), clubSandwich = pv("clubSandwich"), nlme = pv("nlme"),
    Matrix = pv("Matrix"), numDeriv = pv("numDeriv"), jsonlite = pv("jsonlite"),
    mmrm = if (have_mmrm) pv("mmrm"), TMB = if (have_mmrm) pv("TMB"),
    BLAS = if (!is.null(si$BLAS)) si$BLAS else "",
    generated = format(Sys.time(), "%Y-%m-%d", tz = "UTC")
  )
  v[!vapply(v, is.null, TRUE)]
}

cases <- list()
add <- function(x) {
  cases[[length(cases) + 1]] <<- x
  cat(sprintf("  %-45s ok\n", x$case))
}

LMER_CTRL <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

base_info <- function(case, group, ds, d, r_call, jaxlmm_formula, reml) {
  list(
    case = case, group = group, dataset = ds,
    n_obs = nrow(d), n_subjects = nlevels(d$subject),
    r_call = r_call, jaxlmm_formula = jaxlmm_formula, reml = reml
  )
}

# ----------------------------------------------------------------------------------------
# lmer fit description (shared by groups 1, 2, 4, 5)
# ----------------------------------------------------------------------------------------

lmer_fit_info <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  list(
    theta = num(getME(fit, "theta")),
    theta_names = arr(names(getME(fit, "theta"))),
    sigma = sigma(fit),
    beta = named(fixef(fit)),
    logLik = as.numeric(logLik(fit)),
    deviance_m2logLik = -2 * as.numeric(logLik(fit)),
    singular = isSingular(fit),
    varcorr = list(
      grp = arr(vc$grp), var1 = arr(ifelse(is.na(vc$var1), "", vc$var1)),
      var2 = arr(ifelse(is.na(vc$var2), "", vc$var2)),
      vcov = num(vc$vcov), sdcor = num(vc$sdcor)
    )
  )
}

# ----------------------------------------------------------------------------------------
# Groups 1 and 2: lmerTest / pbkrtest / emmeans on lmer fits (REML)
# ----------------------------------------------------------------------------------------

contrast_results <- function(fit, L) {
  res <- list(L = rows(L), L_colnames = arr(colnames(L)), n_rows = nrow(L))
  for (ddf in c("Satterthwaite", "Kenward-Roger")) {
    key <- if (ddf == "Satterthwaite") "satterthwaite" else "kenward_roger"
    if (nrow(L) == 1) {
      ct <- as.data.frame(contest(fit, L, ddf = ddf, joint = FALSE, confint = TRUE))
      res[[key]] <- list(
        estimate = ct[["Estimate"]], se = ct[["Std. Error"]], df = ct[["df"]],
        t = ct[["t value"]], p = ct[["Pr(>|t|)"]], lower = ct[["lower"]], upper = ct[["upper"]]
      )
    }
    ct <- as.data.frame(contest(fit, L, ddf = ddf, joint = TRUE))
    res[[paste0(key, "_F")]] <- list(
      F = ct[["F value"]], num_df = ct[["NumDF"]], den_df = ct[["DenDF"]], p = ct[["Pr(>F)"]],
      sum_sq = ct[["Sum Sq"]], mean_sq = ct[["Mean Sq"]]
    )
  }
  # pbkrtest directly: KRmodcomp with the restriction matrix (H0: L beta = 0)
  kr <- KRmodcomp(fit, L)
  res$pbkrtest_KRmodcomp <- kr_stats(kr)
  if (nrow(L) == 1) res$pbkrtest_get_Lb_ddf <- get_Lb_ddf(fit, L)
  res
}

kr_stats <- function(kr) {
  s <- kr$stats
  list(
    F = s$Fstat, num_df = s$ndf, den_df = s$ddf, F_scaling = s$F.scaling, p = s$p.value,
    F_unscaled = s$FstatU, p_unscaled = s$p.valueU
  )
}

lmertest_case <- function(case, group, ds, fixed, re, jax_re, contrasts, drop_term) {
  d <- get_ds(ds)
  fstr <- paste(fixed, "+", re)
  fit <- lmerTest::lmer(as.formula(fstr), data = d, REML = TRUE, control = LMER_CTRL)
  cn <- names(fixef(fit))
  out <- base_info(
    case, group, ds, d,
    sprintf("lmerTest::lmer(%s, data, REML = TRUE, control = lmerControl(optimizer = \"bobyqa\"))", fstr),
    paste(fixed, "+", jax_re), TRUE
  )
  out$coef_names <- arr(cn)
  out$fit <- lmer_fit_info(fit)
  out$vcov <- rows(as.matrix(vcov(fit)))
  # lmerTest's Satterthwaite ingredients: varpar = c(theta, sigma); asymptotic covariance of
  # varpar (inverse of half the numerical Hessian of the deviance) and the Jacobian of
  # vcov(beta) w.r.t. varpar (one p x p matrix per varpar element).
  out$lmertest_varpar <- list(
    names = arr(c(names(getME(fit, "theta")), "sigma")),
    values = num(c(fit@theta, fit@sigma)),
    vcov_varpar = rows(fit@vcov_varpar),
    jac_list = lapply(fit@Jac_list, rows)
  )
  out$coef_satterthwaite <- coef_table(summary(fit, ddf = "Satterthwaite")$coefficients)
  out$coef_kenward_roger <- coef_table(summary(fit, ddf = "Kenward-Roger")$coefficients)
  out$vcov_kenward_roger <- rows(as.matrix(vcovAdj(fit)))
  out$kr_df_pbkrtest <- num(vapply(seq_along(cn), function(j) {
    L <- matrix(0, 1, length(cn)); L[1, j] <- 1; get_Lb_ddf(fit, L)
  }, 0))
  a_s <- anova(fit, type = 3, ddf = "Satterthwaite")
  out$anova_type3_satterthwaite <- anova_table(a_s)
  out$anova_type3_kenward_roger <- anova_table(anova(fit, type = 3, ddf = "Kenward-Roger"))
  tests <- show_tests(a_s, fractions = FALSE)
  # recorded with zapsmall(digits = 12): the matrices lmerTest used carry ~1e-15 noise from ginv()
  out$anova_type3_L <- lapply(tests, function(L) list(rownames = arr(rownames(L)), L = rows(zapsmall(L, digits = 12))))
  out$contrasts <- lapply(contrasts, function(spec) {
    L <- do.call(Lmat, c(list(cn), spec))
    contrast_results(fit, L)
  })
  small <- update(fit, as.formula(paste(". ~ . -", drop_term)))
  out$krmodcomp_drop <- c(
    list(term = drop_term, small_formula = paste(deparse(formula(small)), collapse = "")),
    kr_stats(KRmodcomp(fit, small))
  )
  list(out = out, fit = fit)
}

emmeans_results <- function(fit, spec_str) {
  spec <- as.formula(spec_str)
  res <- list(spec = spec_str)
  for (df_method in c("satterthwaite", "kenward-roger")) {
    key <- gsub("-", "_", df_method)
    e <- emmeans(fit, spec, lmer.df = df_method)
    s <- as.data.frame(summary(e))
    grid_cols <- setdiff(names(s), c("emmean", "SE", "df", "lower.CL", "upper.CL"))
    r <- list(
      grid = lapply(setNames(grid_cols, grid_cols), function(g) arr(as.character(s[[g]]))),
      emmean = num(s$emmean), se = num(s$SE), df = num(s$df),
      lower_cl = num(s$lower.CL), upper_cl = num(s$upper.CL),
      linfct = rows(e@linfct)
    )
    p <- pairs(e)
    pt <- as.data.frame(summary(p))
    pn <- as.data.frame(summary(p, adjust = "none"))
    pgrid <- setdiff(names(pt), c("estimate", "SE", "df", "t.ratio", "p.value"))
    r$pairs <- list(
      grid = lapply(setNames(pgrid, pgrid), function(g) arr(as.character(pt[[g]]))),
      estimate = num(pt$estimate), se = num(pt$SE), df = num(pt$df), t = num(pt$t.ratio),
      p_tukey = num(pt$p.value), p_none = num(pn$p.value),
      linfct = rows(p@linfct)
    )
    res[[key]] <- r
  }
  res
}

# ----------------------------------------------------------------------------------------
# Group 3: mmrm (optional) and clubSandwich on gls / lmer
# ----------------------------------------------------------------------------------------

mmrm_case <- function(ds) {
  d <- get_ds(ds)
  fstr <- "y ~ time * arm + x + us(visit | subject)"
  variants <- list(
    satterthwaite = list(method = "Satterthwaite", vcov = "Asymptotic"),
    kenward_roger = list(method = "Kenward-Roger", vcov = "Kenward-Roger"),
    kenward_roger_linear = list(method = "Kenward-Roger", vcov = "Kenward-Roger-Linear"),
    empirical_residual = list(method = "Residual", vcov = "Empirical"),
    empirical_satterthwaite = list(method = "Satterthwaite", vcov = "Empirical"),
    empirical_bias_reduced_residual = list(method = "Residual", vcov = "Empirical-Bias-Reduced"),
    empirical_bias_reduced_satterthwaite = list(method = "Satterthwaite", vcov = "Empirical-Bias-Reduced")
  )
  out <- base_info(
    paste0("mmrm_un_", ds), "mmrm", ds, d,
    sprintf("mmrm::mmrm(%s, data, reml = TRUE, method = <method>, vcov = <vcov>)", fstr),
    "y ~ time * arm + x + un(visit | subject)", TRUE
  )
  # mmrm's default (L-BFGS-B first) can stop with a gradient of ~1e-3; pick the optimizer with
  # the best REML log-likelihood and use it for every variant.
  opts <- c("nlminb", "BFGS", "L-BFGS-B")
  ll <- vapply(opts, function(o) {
    f <- tryCatch(suppressWarnings(mmrm::mmrm(as.formula(fstr), data = d, reml = TRUE, optimizer = o)),
                  error = function(e) NULL)
    if (is.null(f)) -Inf else as.numeric(logLik(f))
  }, 0)
  best_opt <- opts[which.max(ll)]
  out$r_call <- sub("vcov = <vcov>)", sprintf("vcov = <vcov>, optimizer = \"%s\")", best_opt), out$r_call, fixed = TRUE)
  out$optimizer <- list(used = best_opt, logLik_by_optimizer = as.list(ll))
  fit0 <- NULL
  res <- list()
  for (k in names(variants)) {
    v <- variants[[k]]
    cap <- capture(mmrm::mmrm(as.formula(fstr), data = d, reml = TRUE, method = v$method, vcov = v$vcov,
                                optimizer = best_opt))
    fit <- cap$value
    if (is.null(fit0)) fit0 <- fit
    cn <- names(coef(fit))
    L1 <- Lmat(cn, c(armB = 1))
    L2 <- Lmat(cn, c(armB = 1, `time:armB` = 4))
    L3 <- Lmat(cn, c(armB = 1), c(`time:armB` = 1))
    c1 <- function(L) {
      r <- mmrm::df_1d(fit, L)
      list(L = rows(L), estimate = r$est, se = r$se, df = r$df, t = r$t_stat, p = r$p_val)
    }
    cm <- function(L) {
      r <- mmrm::df_md(fit, L)
      o <- list(L = rows(L), F = r$f_stat, num_df = r$num_df, den_df = r$denom_df, p = r$p_val)
      if (v$method == "Kenward-Roger") {
        # F above is already multiplied by lambda (KR scaling), computed with the adjusted vcov
        kr <- mmrm:::h_kr_df(v0 = fit$beta_vcov, l = L, w = component(fit, "theta_vcov"), p = fit$kr_comp$P)
        o$F_scaling <- kr$lambda
        o$F_unscaled <- r$f_stat / kr$lambda
      }
      o
    }
    res[[k]] <- list(
      method = v$method, vcov_type = v$vcov,
      coef = coef_table(summary(fit)$coefficients),
      vcov = rows(vcov(fit)),
      contrasts_1d = list(c1(L1), c1(L2)),
      contrasts_md = list(cm(L3)),
      warnings = cap$warnings
    )
  }
  cn <- names(coef(fit0))
  out$coef_names <- arr(cn)
  out$fit <- list(
    beta = named(coef(fit0)),
    vcov_asymptotic = rows(component(fit0, "beta_vcov")),
    logLik = as.numeric(logLik(fit0)),
    deviance_m2logLik = -2 * as.numeric(logLik(fit0)),
    visits = arr(levels(d$visit)),
    residual_cov = rows(VarCorr(fit0)),
    theta_est = num(component(fit0, "theta_est")),
    theta_vcov = rows(component(fit0, "theta_vcov"))
  )
  out$variants <- res
  out
}

gls_ctrl <- function(opt = "nlminb") {
  glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-14,
             opt = opt, optimMethod = "BFGS", returnObject = TRUE)
}

# gls fit polished as in ../make_reference.R: default start with nlminb, then restarts from the
# fitted structures with nlminb and optim (BFGS); the fit with the lowest deviance is kept.
gls_polish <- function(fixed, d, cor, var, method) {
  fit1 <- gls(fixed, data = d, correlation = cor, weights = var, method = method, control = gls_ctrl("nlminb"))
  fits <- list(nlminb = fit1)
  for (opt in c("nlminb", "optim")) {
    r <- tryCatch(
      gls(fixed, data = d, correlation = fit1$modelStruct$corStruct, weights = fit1$modelStruct$varStruct,
          method = method, control = gls_ctrl(opt)),
      error = function(e) NULL)
    if (!is.null(r)) fits[[paste0(opt, "_restart")]] <- r
  }
  devs <- vapply(fits, function(f) -2 * as.numeric(logLik(f)), 0)
  fit <- fits[[which.min(devs)]]
  attr(fit, "polish") <- list(deviance_by_attempt = as.list(devs), kept = names(which.min(devs)))
  fit
}

gls_un <- function(d, reml = TRUE) {
  gls_polish(y ~ time * arm + x, d, corSymm(form = ~ vi | subject), varIdent(form = ~ 1 | visit),
             if (reml) "REML" else "ML")
}

# Textbook sandwich from per-subject V_i at the fitted parameters, computed directly:
# CR0 meat = sum_i X_i' W_i e_i e_i' W_i X_i; the "whitened" CR2 (mmrm's Empirical-Bias-Reduced)
# whitens with U_i' U_i = V_i^-1 and uses (I - U_i X_i M X_i' U_i')^(-1/2) (symmetric inverse sqrt),
# M = (X' V^-1 X)^-1.  clubSandwich's CR2 is a different matrix (Pustejovsky & Tipton 2018 form,
# A_i = D_i' B_i^(-1/2) D_i with D_i' D_i = V_i); see README.md.
manual_sandwich <- function(X, y, subject, Vlist) {
  idx <- split(seq_len(nrow(X)), subject)
  stopifnot(length(idx) == length(Vlist))
  Wl <- lapply(Vlist, solve)
  M <- solve(Reduce(`+`, lapply(seq_along(idx), function(i) crossprod(X[idx[[i]], , drop = FALSE], Wl[[i]] %*% X[idx[[i]], , drop = FALSE]))))
  b <- M %*% Reduce(`+`, lapply(seq_along(idx), function(i) crossprod(X[idx[[i]], , drop = FALSE], Wl[[i]] %*% y[idx[[i]]])))
  meat0 <- 0
  meat2 <- 0
  for (i in seq_along(idx)) {
    ii <- idx[[i]]
    U <- chol(Wl[[i]])
    Xt <- U %*% X[ii, , drop = FALSE]
    et <- U %*% (y[ii] - X[ii, , drop = FALSE] %*% b)
    ev <- eigen(diag(length(ii)) - Xt %*% M %*% t(Xt), symmetric = TRUE)
    As <- ev$vectors %*% diag(1 / sqrt(ev$values), length(ii)) %*% t(ev$vectors)
    g0 <- crossprod(Xt, et)
    g2 <- crossprod(Xt, As %*% et)
    meat0 <- meat0 + tcrossprod(g0)
    meat2 <- meat2 + tcrossprod(g2)
  }
  list(beta = as.numeric(b), CR0 = M %*% meat0 %*% M, CR2_whitened = M %*% meat2 %*% M)
}

cr_block <- function(fit, types = c("CR0", "CR1", "CR2")) {
  res <- list()
  for (ty in types) {
    V <- vcovCR(fit, type = ty)
    r <- list(vcov = rows(as.matrix(V)), se = num(sqrt(diag(as.matrix(V)))))
    ct <- as.data.frame(coef_test(fit, vcov = V, test = c("naive-t", "Satterthwaite")))
    # clubSandwich >= 0.5.8 returns one row per (coef, test); keep the Satterthwaite rows
    if ("df_Satt" %in% names(ct)) {
      r$df_satterthwaite <- num(ct$df_Satt)
      r$p_satterthwaite <- num(ct$p_Satt)
    } else if ("df" %in% names(ct)) {
      r$coef_test <- lapply(as.list(ct), function(x) if (is.numeric(x)) num(x) else arr(as.character(x)))
    }
    res[[ty]] <- r
  }
  res
}

clubsandwich_gls_case <- function(ds) {
  d <- get_ds(ds)
  fit <- gls_un(d, TRUE)
  cn <- names(coef(fit))
  out <- base_info(
    paste0("clubsandwich_gls_un_", ds), "sandwich", ds, d,
    "clubSandwich::vcovCR(nlme::gls(y ~ time * arm + x, correlation = corSymm(form = ~ vi | subject), weights = varIdent(form = ~ 1 | visit), method = \"REML\"), type = <CR0|CR1|CR2>)",
    "y ~ time * arm + x + un(visit | subject)", TRUE
  )
  out$coef_names <- arr(cn)
  out$fit <- list(beta = named(coef(fit)), vcov_model = rows(vcov(fit)),
                  logLik = as.numeric(logLik(fit)), deviance_m2logLik = -2 * as.numeric(logLik(fit)),
                  polish = attr(fit, "polish"))
  out$cr <- cr_block(fit)
  Vlist <- lapply(levels(d$subject), function(s) unclass(getVarCov(fit, individual = s)))
  ms <- manual_sandwich(model.matrix(y ~ time * arm + x, d), d$y, d$subject, Vlist)
  stopifnot(max(abs(ms$beta - coef(fit))) < 1e-8)
  out$cr_manual <- list(CR0 = rows(ms$CR0), CR2_whitened = rows(ms$CR2_whitened),
                        se_CR0 = num(sqrt(diag(ms$CR0))), se_CR2_whitened = num(sqrt(diag(ms$CR2_whitened))))
  out
}

clubsandwich_lmer_case <- function(ds) {
  d <- get_ds(ds)
  fit <- lme4::lmer(y ~ time + arm + x + (1 | subject), data = d, REML = TRUE, control = LMER_CTRL)
  cn <- names(fixef(fit))
  out <- base_info(
    paste0("clubsandwich_lmer_int_", ds), "sandwich", ds, d,
    "clubSandwich::vcovCR(lme4::lmer(y ~ time + arm + x + (1 | subject), data, REML = TRUE), type = <CR0|CR1|CR2>)",
    "y ~ time + arm + x + (1 | subject)", TRUE
  )
  out$coef_names <- arr(cn)
  out$fit <- lmer_fit_info(fit)
  out$fit$vcov_model <- rows(as.matrix(vcov(fit)))
  out$cr <- cr_block(fit)
  Z <- getME(fit, "Z")
  Lam <- getME(fit, "Lambda")
  V <- as.matrix(sigma(fit)^2 * (tcrossprod(Z %*% Lam) + Diagonal(nrow(d))))
  Vlist <- lapply(split(seq_len(nrow(d)), d$subject), function(ii) V[ii, ii, drop = FALSE])
  ms <- manual_sandwich(getME(fit, "X"), d$y, d$subject, Vlist)
  stopifnot(max(abs(ms$beta - fixef(fit))) < 1e-8)
  out$cr_manual <- list(CR0 = rows(ms$CR0), CR2_whitened = rows(ms$CR2_whitened),
                        se_CR0 = num(sqrt(diag(ms$CR0))), se_CR2_whitened = num(sqrt(diag(ms$CR2_whitened))))
  out
}

# ----------------------------------------------------------------------------------------
# Group 4: intervals
# ----------------------------------------------------------------------------------------

profile_case <- function(ds, re, jax_re, reml, meaning) {
  d <- get_ds(ds)
  fstr <- paste("y ~ time + arm + x +", re)
  fit <- lme4::lmer(as.formula(fstr), data = d, REML = reml, control = LMER_CTRL)
  tag <- if (grepl("\\|\\|", re)) "uncorr" else if (grepl("time \\|", re)) "corr" else "int"
  out <- base_info(
    sprintf("profile_lmer_%s_%s_%s", tag, ds, if (reml) "reml" else "ml"), "intervals", ds, d,
    sprintf("confint(lme4::lmer(%s, data, REML = %s), method = \"profile\", level = 0.95, oldNames = TRUE)", fstr, reml),
    paste("y ~ time + arm + x +", jax_re), reml
  )
  out$coef_names <- arr(names(fixef(fit)))
  out$fit <- lmer_fit_info(fit)
  cap <- capture(confint(fit, method = "profile", level = 0.95, oldNames = TRUE))
  ci <- cap$value
  out$profile <- list(
    level = 0.95, names = arr(rownames(ci)), lower = num(ci[, 1]), upper = num(ci[, 2]),
    basis = "ML: lme4's profile (devfun2) calls refitML(), so a REML fit is profiled on the ML deviance around the ML fit",
    meaning = meaning, warnings = cap$warnings, messages = cap$messages
  )
  # Wald intervals for the fixed effects (normal quantile, unadjusted vcov)
  w <- confint(fit, method = "Wald", parm = "beta_", level = 0.95)
  out$wald_fixed <- list(level = 0.95, names = arr(rownames(w)), lower = num(w[, 1]), upper = num(w[, 2]))
  out
}

gls_intervals_case <- function(ds, reml) {
  d <- get_ds(ds)
  fit <- gls_polish(y ~ time * arm + x, d, corAR1(form = ~ vi | subject), NULL,
                    if (reml) "REML" else "ML")
  out <- base_info(
    sprintf("intervals_gls_ar1_%s_%s", ds, if (reml) "reml" else "ml"), "intervals", ds, d,
    sprintf("nlme::intervals(nlme::gls(y ~ time * arm + x, data, correlation = corAR1(form = ~ vi | subject), method = \"%s\"), level = 0.95)", if (reml) "REML" else "ML"),
    "y ~ time * arm + x + ar1(visit | subject)", reml
  )
  out$coef_names <- arr(names(coef(fit)))
  iv <- intervals(fit, level = 0.95, which = "all")
  p <- length(coef(fit))
  N <- nrow(d)
  av <- fit$apVar
  out$fit <- list(
    beta = named(coef(fit)), vcov = rows(vcov(fit)), sigma = fit$sigma,
    phi = as.numeric(coef(fit$modelStruct$corStruct, unconstrained = FALSE)),
    logLik = as.numeric(logLik(fit)), deviance_m2logLik = -2 * as.numeric(logLik(fit))
  )
  out$intervals <- list(
    level = 0.95,
    coef = list(names = arr(rownames(iv$coef)), lower = num(iv$coef[, "lower"]),
                est = num(iv$coef[, "est."]), upper = num(iv$coef[, "upper"]),
                t_df = N - p, t_quantile = qt(0.975, N - p)),
    phi = list(lower = iv$corStruct[1, "lower"], est = iv$corStruct[1, "est."], upper = iv$corStruct[1, "upper"]),
    sigma = list(lower = unname(iv$sigma["lower"]), est = unname(iv$sigma["est."]), upper = unname(iv$sigma["upper"]))
  )
  # apVar: approximate covariance of the unconstrained parameters, here
  # (log((1 + phi) / (1 - phi)), log(sigma)); the intervals are est +- z * se on that scale.
  out$apVar <- list(names = arr(rownames(av)), matrix = rows(av),
                    pars = num(attr(av, "Pars")), z_quantile = qnorm(0.975))
  out
}

# ----------------------------------------------------------------------------------------
# Group 5: likelihood-ratio tests
# ----------------------------------------------------------------------------------------

lrt_lmer_case <- function(ds, re0, re1, jax0, jax1, tag, mixture, reml) {
  d <- get_ds(ds)
  f0 <- paste("y ~ time + arm + x +", re0)
  f1 <- paste("y ~ time + arm + x +", re1)
  m0 <- lme4::lmer(as.formula(f0), data = d, REML = reml, control = LMER_CTRL)
  m1 <- lme4::lmer(as.formula(f1), data = d, REML = reml, control = LMER_CTRL)
  a <- as.data.frame(anova(m0, m1, refit = FALSE))
  stat <- a$Chisq[2]
  dfn <- a$Df[2]
  out <- base_info(
    sprintf("lrt_lmer_%s_%s_%s", tag, ds, if (reml) "reml" else "ml"), "lrt", ds, d,
    sprintf("anova(lme4::lmer(%s, data, REML = %s), lme4::lmer(%s, data, REML = %s), refit = FALSE)", f0, reml, f1, reml),
    NULL, reml
  )
  out$jaxlmm_formula <- NULL
  out$jaxlmm_formula_null <- paste("y ~ time + arm + x +", jax0)
  out$jaxlmm_formula_alt <- paste("y ~ time + arm + x +", jax1)
  out$coef_names <- arr(names(fixef(m1)))
  out$null <- list(formula = f0, npar = a$npar[1], logLik = a$logLik[1],
                   deviance_m2logLik = -2 * a$logLik[1], AIC = a$AIC[1], BIC = a$BIC[1],
                   singular = isSingular(m0), theta = num(getME(m0, "theta")), sigma = sigma(m0))
  out$alt <- list(formula = f1, npar = a$npar[2], logLik = a$logLik[2],
                  deviance_m2logLik = -2 * a$logLik[2], AIC = a$AIC[2], BIC = a$BIC[2],
                  singular = isSingular(m1), theta = num(getME(m1, "theta")), sigma = sigma(m1))
  out$lrt <- list(chisq = stat, df = dfn, p_naive = a[["Pr(>Chisq)"]][2])
  if (mixture == "chibar_1_2") {
    out$lrt$mixture <- "0.5*chi2(1) + 0.5*chi2(2)"
    out$lrt$p_mixture <- 0.5 * pchisq(stat, 1, lower.tail = FALSE) + 0.5 * pchisq(stat, 2, lower.tail = FALSE)
  } else if (mixture == "chibar_0_1") {
    out$lrt$mixture <- "0.5*chi2(0) + 0.5*chi2(1)"
    out$lrt$p_mixture <- 0.5 * pchisq(stat, 1, lower.tail = FALSE)
  }
  out
}

lrt_gls_case <- function(ds, reml) {
  d <- get_ds(ds)
  meth <- if (reml) "REML" else "ML"
  m0 <- gls_polish(y ~ time * arm + x, d, corCompSymm(form = ~ vi | subject), NULL, meth)
  m1 <- gls_un(d, reml)
  a <- as.data.frame(anova(m0, m1))
  out <- base_info(
    sprintf("lrt_gls_cs_vs_un_%s_%s", ds, tolower(meth)), "lrt", ds, d,
    sprintf("anova(nlme::gls(y ~ time * arm + x, correlation = corCompSymm(form = ~ vi | subject), method = \"%s\"), nlme::gls(y ~ time * arm + x, correlation = corSymm(form = ~ vi | subject), weights = varIdent(form = ~ 1 | visit), method = \"%s\"))", meth, meth),
    NULL, reml
  )
  out$jaxlmm_formula <- NULL
  out$jaxlmm_formula_null <- "y ~ time * arm + x + cs(visit | subject)"
  out$jaxlmm_formula_alt <- "y ~ time * arm + x + un(visit | subject)"
  out$coef_names <- arr(names(coef(m1)))
  out$null <- list(structure = "cs", npar = a$df[1], logLik = a$logLik[1],
                   deviance_m2logLik = -2 * a$logLik[1], AIC = a$AIC[1], BIC = a$BIC[1])
  out$alt <- list(structure = "un", npar = a$df[2], logLik = a$logLik[2],
                  deviance_m2logLik = -2 * a$logLik[2], AIC = a$AIC[2], BIC = a$BIC[2])
  out$lrt <- list(chisq = a$L.Ratio[2], df = a$df[2] - a$df[1], p_naive = a[["p-value"]][2])
  out
}

# ----------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------

unavailable <- character(0)

cat("group 1: lmerTest / pbkrtest on re_slope\n")
fx <- "y ~ time + arm + x"
contr_slope <- list(
  time = list(c(time = 1)),
  armB = list(c(armB = 1)),
  mean_B_t2 = list(c(`(Intercept)` = 1, time = 2, armB = 1)),
  time_and_armB = list(c(time = 1), c(armB = 1))
)
for (spec in list(
  list("corr", "(time | subject)", "(time | subject)"),
  list("int", "(1 | subject)", "(1 | subject)"),
  list("uncorr", "(time || subject)", "(time || subject)")
)) {
  r <- lmertest_case(paste0("lmertest_", spec[[1]], "_re_slope"), "lmertest", "re_slope",
                     fx, spec[[2]], spec[[3]], contr_slope, "arm")
  add(r$out)
}

cat("group 2: lmerTest / emmeans on factor3\n")
contr_f3 <- list(
  armB_at_V1 = list(c(armB = 1)),
  B_minus_A_at_V4 = list(c(armB = 1, `visitV4:armB` = 1)),
  arm_at_V1 = list(c(armB = 1), c(armC = 1))
)
r <- lmertest_case("lmertest_int_factor3", "lmertest", "factor3",
                   "y ~ visit * arm + x", "(1 | subject)", "(1 | subject)", contr_f3, "visit:arm")
f3 <- r$fit
out <- r$out
out$x_mean <- mean(get_ds("factor3")$x)
out$emmeans <- list(
  arm_by_visit = emmeans_results(f3, "~ arm | visit"),
  arm = emmeans_results(f3, "~ arm")
)
add(out)

cat("group 3: sandwich / mmrm\n")
if (have_mmrm) {
  for (ds in c("balanced", "monotone")) add(mmrm_case(ds))
} else {
  unavailable <- c(unavailable, "mmrm")
  cat("  mmrm not installed: mmrm cases skipped\n")
}
for (ds in c("balanced", "monotone")) add(clubsandwich_gls_case(ds))
add(clubsandwich_lmer_case("re_slope"))

cat("group 4: intervals\n")
meaning_corr <- list(
  .sig01 = "sd of the random intercept (subject)",
  .sig02 = "correlation of random intercept and slope (subject)",
  .sig03 = "sd of the random slope on time (subject)",
  .sigma = "residual sd",
  fixed = "rows named like coefficients are profile intervals for the fixed effects"
)
meaning_int <- list(
  .sig01 = "sd of the random intercept (subject)",
  .sigma = "residual sd",
  fixed = "rows named like coefficients are profile intervals for the fixed effects"
)
for (reml in c(TRUE, FALSE)) {
  add(profile_case("re_slope", "(time | subject)", "(time | subject)", reml, meaning_corr))
}
add(profile_case("re_slope", "(1 | subject)", "(1 | subject)", TRUE, meaning_int))
# a singular fit: the slope SD is 0, its profile interval starts at the bound
meaning_uncorr <- list(
  .sig01 = "sd of the random intercept (subject)",
  .sig02 = "sd of the random slope on time (subject), estimated as 0 (singular fit)",
  .sigma = "residual sd",
  fixed = "rows named like coefficients are profile intervals for the fixed effects"
)
add(profile_case("re_boundary", "(time || subject)", "(time || subject)", FALSE, meaning_uncorr))
for (reml in c(TRUE, FALSE)) add(gls_intervals_case("monotone", reml))

cat("group 5: likelihood-ratio tests\n")
for (ds in c("re_slope", "re_boundary")) {
  for (reml in c(FALSE, TRUE)) {
    add(lrt_lmer_case(ds, "(1 | subject)", "(time | subject)", "(1 | subject)", "(time | subject)",
                      "int_vs_corr", "chibar_1_2", reml))
    add(lrt_lmer_case(ds, "(1 | subject)", "(time || subject)", "(1 | subject)", "(time || subject)",
                      "int_vs_uncorr", "chibar_0_1", reml))
  }
}
for (reml in c(TRUE, FALSE)) add(lrt_gls_case("balanced", reml))

ids <- vapply(cases, `[[`, "", "case")
stopifnot(!anyDuplicated(ids))
out <- list(
  `_versions` = versions(),
  `_unavailable` = arr(unavailable),
  `_notes` = list(
    data = "factors visit, arm, sex, subject with sorted levels; rows with missing y dropped; vi = as.integer(visit)",
    matrices = "matrices are lists of rows; rows/cols follow coef_names unless stated otherwise",
    tables = "tables are columnar: names/terms plus one array per column",
    lmer_optimizer = "all lmer fits use lmerControl(optimizer = 'bobyqa')",
    see = "tests/reference/inference/README.md"
  ),
  cases = cases
)
dir.create(dirname(out_path), showWarnings = FALSE, recursive = TRUE)
write_json(out, out_path, auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat("wrote", out_path, "with", length(cases), "cases\n")
